"""The record every annotation reader produces, the error they raise, and where media lives.

A ``ClipRecord`` says *what* a sample is (which media, which time window, which captions, which
audio type) without decoding anything, so readers stay fast enough to validate a whole corpus at
start-up and the dataset layer (``clip4vla.data.dataset``) owns all decoding.

Media layout, both routes filled in by the readers through ``MediaLayout``:

- raw:      ``<video_dir>/<video_id>.<ext>`` (the first of ``VIDEO_EXTENSIONS`` that exists), or a
            per-dataset relative path (UCF101: ``<Class>/<file>.avi``); audio-only corpora use
            ``<audio_dir>/<video_id>.<ext>`` instead.
- prepared: ``<prepared_dir>/frames/<video_id>/`` (1-fps jpgs) and
            ``<prepared_dir>/audio/<video_id>.wav`` (16 kHz stereo), as written by the preparation
            script.

Prepared media mirror the raw files: they are named after the raw media file's stem (which is the
``video_id`` except where a reader documents otherwise, e.g. VATEX ``media="full"``), and
``start``/``end`` apply to both routes alike.

A record whose media is missing is still returned: the dataset layer skips unreadable media at
iteration time with a counted, logged reason. ``check_media`` reports missing media at start-up.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

AUDIO_TYPES = ("vb", "nb")
# A record may also leave its type to the sound: "auto" (manifest rows) is decided per clip by the
# speech detector from the decoded sound (clip4vla.audio.speech, applied in clip4vla.data.dataset).
RECORD_AUDIO_TYPES = (*AUDIO_TYPES, "auto")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".ts")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file, the line (or JSON path) and the field.

    Raised at start-up by every reader, so a bad row stops the run before any training instead of
    silently dropping samples.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        message: str,
        *,
        line: int | None = None,
        location: str | None = None,
        field: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.location = location
        self.field = field
        self.reason = message
        parts = [str(self.path)]
        if line is not None:
            parts.append(f"line {line}")
        if location is not None:
            parts.append(location)
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join(parts) + f": {message}")

    def __reduce__(self):  # keyword-only fields: default exception pickling would lose them
        kwargs = {"line": self.line, "location": self.location, "field": self.field}
        return (_rebuild_annotation_error, (self.path, self.reason, kwargs))


def _rebuild_annotation_error(path: Path, message: str, kwargs: dict) -> AnnotationError:
    return AnnotationError(path, message, **kwargs)


def _optional_path(value: str | os.PathLike | None) -> Path | None:
    return None if value is None else Path(value)


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One sample's annotation: media locations, time window, captions, audio type, label.

    - ``video_path``: the raw video (frames and, in the raw route, the audio stream); None for
      audio-only corpora (ESC-50, AudioCaps read from wav files).
    - ``audio_path``: a separate audio file (prepared wav or the raw audio of an audio-only corpus);
      None means the audio comes from ``video_path``'s audio stream.
    - ``frames_dir``: prepared 1-fps frames; None when not prepared.
    - ``start``/``end``: seconds within the media files; None means the whole file.
    - ``captions``: every caption of the clip (all of them are positives of the clip in retrieval); at least one.
    - ``audio_type``: "vb" (verbal) or "nb" (non-verbal), the default type token; "auto": the
      speech detector picks one from the clip's decoded sound (the same choice on every visit).
    - ``label``: class index for classification corpora (0-based), else None.
    - ``source``: dataset name ("msrvtt", "vatex", ...).
    - ``audio_from``: for a silent clip paired with another clip's audio (the paper's handling of
      missing audio, ``scripts/pair_missing_audio.py``): that clip's id; ``audio_path`` then names
      its audio (raw video or prepared wav), used in both media routes.
    - ``media_id``: the id of the file the clip is a window of, where several clips share one file
      under ids of their own (a manifest's windows): what a shard store holds; None: ``video_id``.
    """

    video_id: str
    video_path: Path | None = None
    audio_path: Path | None = None
    frames_dir: Path | None = None
    start: float | None = None
    end: float | None = None
    captions: tuple[str, ...] = ()
    audio_type: str = "vb"
    label: int | None = None
    source: str = ""
    audio_from: str | None = None
    media_id: str | None = None

    def __post_init__(self) -> None:
        # Normalise here so every reader (and synthetic.py) gets the same types without repeating
        # it; written with cheap fast paths because HowTo100M builds millions of records.
        set_ = object.__setattr__
        for name in ("video_path", "audio_path", "frames_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))
        if type(self.captions) is not tuple:
            if isinstance(self.captions, str):
                raise TypeError(f"{self.video_id}: captions must be a sequence of strings, not one string")
            set_(self, "captions", tuple(self.captions))
        if self.audio_type not in RECORD_AUDIO_TYPES:
            raise ValueError(
                f"{self.video_id}: audio_type must be one of {RECORD_AUDIO_TYPES}, got {self.audio_type!r}"
            )
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is None:
                continue
            if type(value) is not float:
                value = float(value)
                set_(self, name, value)
            if not 0.0 <= value < math.inf:  # also rejects NaN
                raise ValueError(f"{self.video_id}: {name} must be a finite non-negative number, got {value}")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"{self.video_id}: end {self.end} is before start {self.start}")


class MediaLayout:
    """Resolves where a clip's media lives under the raw and prepared routes.

    ``video_dir``/``audio_dir`` are scanned once (one ``os.scandir`` each, lazily) so resolving the
    extension of a million clips costs no per-clip ``stat``. A clip whose file is absent still gets
    the path it *should* have (first extension in the list), so ``check_media`` and the dataset's
    skip log can name it.
    """

    def __init__(
        self,
        video_dir: str | os.PathLike | None = None,
        prepared_dir: str | os.PathLike | None = None,
        audio_dir: str | os.PathLike | None = None,
        video_extensions: Sequence[str] = VIDEO_EXTENSIONS,
        audio_extensions: Sequence[str] = AUDIO_EXTENSIONS,
    ) -> None:
        self.video_dir = _optional_path(video_dir)
        self.prepared_dir = _optional_path(prepared_dir)
        self.audio_dir = _optional_path(audio_dir)
        self.video_extensions = tuple(video_extensions)
        self.audio_extensions = tuple(audio_extensions)
        self._index: dict[Path, dict[str, str]] = {}

    def _scan(self, directory: Path, extensions: tuple[str, ...]) -> dict[str, str]:
        """Map stem -> file name for files in ``directory`` with one of ``extensions`` (earliest wins)."""
        if directory not in self._index:
            rank = {ext: i for i, ext in enumerate(extensions)}
            best: dict[str, tuple[int, str]] = {}
            if directory.is_dir():
                with os.scandir(directory) as entries:
                    for entry in entries:
                        stem, ext = os.path.splitext(entry.name)
                        r = rank.get(ext.lower())
                        if r is not None and (stem not in best or r < best[stem][0]):
                            best[stem] = (r, entry.name)
            self._index[directory] = {stem: name for stem, (_, name) in best.items()}
        return self._index[directory]

    def _find(self, directory: Path | None, name: str, extensions: tuple[str, ...]) -> Path | None:
        if directory is None:
            return None
        found = self._scan(directory, extensions).get(name)
        return directory / (found if found is not None else name + extensions[0])

    def video_path(self, video_id: str, relative: str | None = None) -> Path | None:
        """Raw video: ``video_dir/relative`` when the dataset names the file, else found by stem."""
        if self.video_dir is None:
            return None
        if relative is not None:
            return self.video_dir / relative
        return self._find(self.video_dir, video_id, self.video_extensions)

    def audio_path(self, video_id: str, relative: str | None = None) -> Path | None:
        """Separate audio file: the prepared wav wins over a raw audio file; None = from the video."""
        if self.prepared_dir is not None:
            return self.prepared_dir / "audio" / f"{video_id}.wav"
        if self.audio_dir is None:
            return None
        if relative is not None:
            return self.audio_dir / relative
        return self._find(self.audio_dir, video_id, self.audio_extensions)

    def frames_dir(self, video_id: str) -> Path | None:
        if self.prepared_dir is None:
            return None
        return self.prepared_dir / "frames" / video_id

    def resolve(self, video_id: str, relative: str | None = None) -> dict[str, Path | None]:
        """Keyword arguments for ``ClipRecord``: ``video_path``, ``audio_path``, ``frames_dir``."""
        return {
            "video_path": self.video_path(video_id, relative),
            "audio_path": self.audio_path(video_id),
            "frames_dir": self.frames_dir(video_id),
        }


def missing_media_reason(record: ClipRecord, require_audio: bool = True) -> str | None:
    """Why a record's media cannot be read, or None when it can (existence only, no decoding).

    Vision is present when the prepared frames directory or the raw video exists (either route
    works). With ``require_audio``, a separate ``audio_path`` must exist too; turn it off when
    silent clips legitimately have no prepared wav.
    """
    has_vision_source = record.frames_dir is not None or record.video_path is not None
    if has_vision_source:
        frames_ok = record.frames_dir is not None and record.frames_dir.is_dir()
        video_ok = record.video_path is not None and record.video_path.is_file()
        if not (frames_ok or video_ok):
            where = record.frames_dir if record.frames_dir is not None else record.video_path
            return f"no video/frames at {where}"
    elif record.audio_path is None:
        return "record names no media at all"
    if record.audio_path is not None and (require_audio or not has_vision_source):
        if not record.audio_path.is_file():
            return f"no audio file at {record.audio_path}"
    return None


def check_media(
    records: Iterable[ClipRecord], require_audio: bool = True
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Split records into (present, missing) media for the start-up report.

    Use ``missing_media_reason`` on a missing record to log why.
    """
    present: list[ClipRecord] = []
    missing: list[ClipRecord] = []
    for record in records:
        (missing if missing_media_reason(record, require_audio) else present).append(record)
    return present, missing
