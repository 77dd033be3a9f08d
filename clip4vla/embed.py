"""Embeddings of your own texts, videos and sounds, with the preprocessing stored in the model file.

    import clip4vla
    model = clip4vla.load_model("runs/pretrain_synthetic/model")
    texts = clip4vla.embed_text(model, ["a red circle moves left", "a siren wails"])   # [2, D]
    videos = clip4vla.embed_video(model, ["clip1.mp4", "clip2.mp4"])                  # [2, D]
    sounds = clip4vla.embed_audio(model, ["clip1.mp4", "rain.wav"], audio_type="auto")  # [2, D]
    scores = texts @ videos.T                                                           # cosine

Every function returns float32 unit rows ``[N, D]`` on the model's device. Deterministic: no random
crop or sampling, and every file is encoded on its own and every text in fixed-size internal
batches, so one input gives bit-identical embeddings whatever else is in the call, the batch
size, or the process.

**Windows.** A clip is cut into fixed windows of ``window_seconds(preprocessing)`` (the longer of
``max_frames`` seconds and ``max_segments`` audio segments); a clip shorter than 1.5 windows is one
window covering all of it — exactly the input training saw (frames spread uniformly, the centre
audio segments). Longer media get ``round(duration / window)`` equal windows (at most
``max_windows``, spread evenly), each encoded like a training clip; the clip's embedding is the
normalised mean of its unit window embeddings. :func:`embed_windows` returns the windows
themselves (with their time spans), which is what search ranks.

**Audio type.** ``audio_type`` is ``"vb"``, ``"nb"``, a mixing ratio ``w``, or ``"auto"``: a cheap
speech detector (:func:`looks_like_speech`, from ``clip4vla.audio.speech``; manifest rows with
``audio_type`` ``auto`` use it too) picks [VB] for speech and [NB] otherwise, per clip. What it
picked: ``embed_audio(..., return_audio_types=True)``, ``embed_windows(...).audio_type``, or this
module's logger at DEBUG level (one line per clip).

**Inputs.** ``embed_video`` / ``embed_audio`` take a list of paths, or one path (``str`` or
``Path``) as a list of one: the result is ``[1, D]`` either way. A file name that is not valid UTF-8
(Linux allows any bytes) is opened by its bytes where the decoders allow it; where they do not (the
audio decoder, for now) the file raises ``MediaError`` with its name shown escaped
(:func:`printable_path`), so a batch job lists it as unreadable instead of stopping.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence, Union

import av
import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from clip4vla.audio import NoAudioError, empty_segments, load_audio, log_mel, to_segments
from clip4vla.audio.speech import heard_audio_type, looks_like_speech, speech_features
from clip4vla.data.records import AUDIO_EXTENSIONS
from clip4vla.media_errors import MediaError
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.text import default_tokenizer, tokenize
from clip4vla.video import load_video_frames

__all__ = [
    "EmbeddedWindows",
    "embed_audio",
    "embed_text",
    "embed_video",
    "embed_windows",
    "is_audio_file",
    "looks_like_speech",
    "speech_features",
    "media_duration",
    "printable_path",
    "window_seconds",
]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
SEGMENT_SECONDS = 224 * 0.008  # one 224-frame segment at the 8-ms hop: 1.792 s
TEXT_BATCH = 32  # texts are encoded in batches of exactly this many rows (padding included)
MAX_WINDOWS = 64


def window_seconds(preprocessing: Preprocessing) -> float:
    """The window length: what one training clip covered (frames at 1 fps, or the audio segments)."""
    return max(float(preprocessing.max_frames), preprocessing.max_segments * SEGMENT_SECONDS)


def printable_path(path: PathLike) -> str:
    """``path`` as text that any terminal, log or UTF-8 file takes: bytes of a name that is not
    valid UTF-8 (which Python carries as lone surrogates, unprintable) are shown escaped, ``\\xff``."""
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to: escape it as it is
        return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _as_paths(media: Sequence[PathLike] | PathLike) -> list[PathLike]:
    """One path (``str``, ``bytes`` or ``Path``) is a list of one: iterating a string would give
    its characters (and a ``MediaError`` for the file ``/``)."""
    if isinstance(media, bytes):
        return [os.fsdecode(media)]
    return [media] if isinstance(media, (str, os.PathLike)) else list(media)


def media_duration(path: PathLike) -> float:
    """Seconds of a media file (its longest stream); ``MediaError`` for an unreadable file."""
    path = Path(os.fsdecode(path))
    if path.is_dir():
        raise MediaError(f"{printable_path(path)}: is a directory, expected a video or sound file")
    if not path.exists():
        raise MediaError(f"{printable_path(path)}: file not found")
    if not path.is_file():
        raise MediaError(f"{printable_path(path)}: not a regular file")
    try:
        info = sf.info(os.fsencode(path))  # by bytes: libsndfile takes any file name that way
        return info.frames / info.samplerate
    except (RuntimeError, sf.LibsndfileError, TypeError):
        pass
    try:
        with av.open(str(path)) as container:
            durations = [float(s.duration * s.time_base) for s in container.streams
                         if s.duration is not None and s.time_base is not None]
            if container.duration is not None:
                durations.append(container.duration / av.time_base)
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise MediaError(f"{path}: not a readable media file ({err})") from err
    if not durations or max(durations) <= 0:
        raise MediaError(f"{path}: the file declares no duration (zero-length or broken)")
    return max(durations)


def windows(duration: float, window: float, max_windows: int = MAX_WINDOWS) -> list[tuple[float, float]]:
    """Fixed ``(start, end)`` windows covering ``[0, duration)`` (module docstring)."""
    if duration < 1.5 * window:
        return [(0.0, duration)]
    n = max(1, round(duration / window))
    spans = [(duration * i / n, duration * (i + 1) / n) for i in range(n)]
    if n > max_windows:
        keep = np.linspace(0, n - 1, max_windows).round().astype(int)
        spans = [spans[i] for i in keep]
    return spans


@dataclasses.dataclass
class EmbeddedWindows:
    """Per-window unit embeddings of one clip, their spans, and the pooled clip embedding."""

    path: str
    spans: list[tuple[float, float]]
    video: torch.Tensor | None  # [W, D] unit window embeddings
    audio: torch.Tensor | None  # [W, D] (None: no audio track)
    audio_type: Any = None
    frames: torch.Tensor | None = None  # [W, F, D] per-frame features (0 where masked)
    frame_mask: torch.Tensor | None = None  # [W, F]
    segments: torch.Tensor | None = None  # [W, L, D] per-segment features
    segment_mask: torch.Tensor | None = None  # [W, L]

    def pooled(self, which: str) -> torch.Tensor | None:
        """The clip embedding: normalised mean of the windows (with audio, for the audio side)."""
        rows = self.video if which == "video" else self.audio
        if rows is None:
            return None
        if which == "audio":
            rows = rows[self.segment_mask.any(dim=1).to(rows.device)]
        return F.normalize(rows.mean(dim=0), dim=-1)


def _window_frames(path: PathLike, pre: Preprocessing, span: tuple[float, float], whole: bool) -> tuple[torch.Tensor, torch.Tensor]:
    start, end = (None, None) if whole else span
    return load_video_frames(path, max_frames=pre.max_frames, sampling=pre.frame_sampling, start=start, end=end,
                             size=pre.image_size)


def _window_audio(path: PathLike, pre: Preprocessing, span: tuple[float, float], whole: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    start, end = (None, None) if whole else span
    try:
        waveform = load_audio(path, start=start, end=end, max_seconds=pre.max_seconds)
    except UnicodeEncodeError as err:  # the audio decoder opens files by a UTF-8 name only
        raise MediaError(f"{printable_path(path)}: the file name is not valid UTF-8 and the audio decoder cannot open "
                         "such a name; rename the file") from err
    spectrogram = log_mel(waveform, frontend=pre.frontend)
    if not bool(torch.isfinite(spectrogram).all()):
        raise MediaError(f"{path}: the spectrogram is not finite (broken audio)")
    segments, mask = to_segments(spectrogram, pre.max_segments, pre.selection)
    return segments, mask, waveform


def _resolve_type(audio_type: Any, waveform: torch.Tensor, path: PathLike) -> Any:
    if audio_type == "auto":
        chosen = heard_audio_type(waveform)
        log.debug("%s: audio type auto -> %s (speech detector)", printable_path(path), chosen)
        return chosen
    return audio_type


def is_audio_file(path: PathLike) -> bool:
    """A sound file (``.wav``, ``.flac``, ...): it has no pictures to embed."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


@torch.no_grad()
def embed_windows(model: CLIP4VLA, path: PathLike, video: bool = True, audio: bool = True,
                  audio_type: Any = "nb", max_windows: int = MAX_WINDOWS) -> EmbeddedWindows:
    """The windows of one clip (module docstring), encoded on their own (one encoder call per side).

    A clip without an audio track has ``audio=None``; unreadable media raise ``MediaError``.
    """
    pre = model.preprocessing or Preprocessing()
    device = next(model.parameters()).device
    duration = media_duration(path)
    spans = windows(duration, window_seconds(pre), max_windows)
    whole = len(spans) == 1  # exactly the training input: no span, the decoders' own rules
    out = EmbeddedWindows(path=str(path), spans=spans, video=None, audio=None)
    if video:
        frames, masks = zip(*(_window_frames(path, pre, s, whole) for s in spans))
        out.frame_mask = torch.stack(masks)
        items, pooled = model.encode_video(torch.stack(frames).to(device), out.frame_mask.to(device))
        out.video, out.frames = pooled.float(), items.float()
    if audio:
        loaded = []
        for span in spans:
            try:
                loaded.append(_window_audio(path, pre, span, whole))
            except NoAudioError:  # no audio track, or none left in this window
                segments, mask = empty_segments(pre.max_segments)
                loaded.append((segments, mask, None))
        heard = [wave for _, _, wave in loaded if wave is not None]
        if heard:
            out.audio_type = _resolve_type(audio_type, torch.cat(heard, dim=1), path)
            out.segment_mask = torch.stack([mask for _, mask, _ in loaded])
            segments = torch.stack([seg for seg, _, _ in loaded]).to(device)
            items, pooled = model.encode_audio(segments, out.segment_mask.to(device), out.audio_type)
            out.audio, out.segments = pooled.float(), items.float()
    return out


@torch.no_grad()
def embed_text(model: CLIP4VLA, texts: Sequence[str]) -> torch.Tensor:
    """Unit text embeddings ``[N, D]``; a text longer than the model's ``max_words`` is truncated
    with a warning (once per call)."""
    if isinstance(texts, str):
        raise TypeError("embed_text takes a list of texts, not one string")
    pre = model.preprocessing or Preprocessing()
    device = next(model.parameters()).device
    tokenizer = default_tokenizer()
    long = [t for t in texts if len(tokenizer.encode(t)) > pre.max_words - 2]
    if long:
        log.warning("%d of %d texts are longer than the model's %d tokens and are truncated, e.g. %r",
                    len(long), len(texts), pre.max_words, long[0][:80])
    tokens = tokenize(list(texts), context_length=pre.max_words, truncate=True)
    rows = []
    for start in range(0, len(tokens), TEXT_BATCH):
        chunk = tokens[start:start + TEXT_BATCH]
        padded = torch.zeros(TEXT_BATCH, tokens.shape[1], dtype=tokens.dtype)  # one GEMM shape for every call
        padded[: len(chunk)] = chunk
        rows.append(model.encode_text(padded.to(device))[: len(chunk)].float())
    return F.normalize(torch.cat(rows), dim=-1) if rows else torch.zeros(0, model.clip.config.embed_dim, device=device)


def embed_video(model: CLIP4VLA, videos: Sequence[PathLike] | PathLike) -> torch.Tensor:
    """Unit video (vision) embeddings ``[N, D]`` (one path: ``[1, D]``); an unreadable file raises
    ``MediaError`` naming it."""
    rows = [embed_windows(model, path, video=True, audio=False).pooled("video") for path in _as_paths(videos)]
    return torch.stack(rows) if rows else torch.zeros(0, model.clip.config.embed_dim)


def embed_audio(model: CLIP4VLA, media: Sequence[PathLike] | PathLike, audio_type: Any = "nb",
                strict: bool = True, return_audio_types: bool = False) -> torch.Tensor | tuple:
    """Unit audio embeddings ``[N, D]`` (one path: ``[1, D]``) of audio files or of videos' sound tracks.

    ``strict`` (default): a file without an audio track raises ``ValueError`` naming it. With
    ``strict=False`` such rows are zero and a bool mask ``[N]`` (True = has audio) comes back too:
    ``(embeddings, mask)``. ``return_audio_types``: also the audio type each row was encoded with
    (what ``"auto"`` chose per file; ``None`` for a file without sound), last in the tuple:
    ``(embeddings, types)`` or ``(embeddings, mask, types)``.
    """
    if audio_type not in ("vb", "nb", "auto") and not isinstance(audio_type, (int, float)):
        raise ValueError(f"audio_type must be 'vb', 'nb', 'auto' or a mixing ratio, got {audio_type!r}")
    dim = model.clip.config.embed_dim
    device = next(model.parameters()).device
    rows, mask, types = [], [], []
    for path in _as_paths(media):
        embedded = embed_windows(model, path, video=False, audio=True, audio_type=audio_type)
        pooled = embedded.pooled("audio")
        if pooled is None and strict:
            raise ValueError(f"{printable_path(path)}: no audio track (pass strict=False to get a mask instead)")
        rows.append(pooled if pooled is not None else torch.zeros(dim, device=device))
        mask.append(pooled is not None)
        types.append(embedded.audio_type)
    out = torch.stack(rows) if rows else torch.zeros(0, dim, device=device)
    result = (out,) if strict else (out, torch.tensor(mask, dtype=torch.bool))
    if return_audio_types:
        result += (types,)
    return result if len(result) > 1 else out
