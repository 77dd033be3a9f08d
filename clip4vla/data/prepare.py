"""Turn a folder of raw videos into the prepared form: 1-fps frames + 16 kHz stereo wav.

Output under ``out_dir``::

    frames/<video_id>/<sec>.jpg   the 1-fps frames, named by second (``000003.jpg``), exactly the
                                  frames ``clip4vla.video.load_video_frames`` would pick
    audio/<video_id>.wav          the whole audio track, 16 kHz stereo; a video without an audio
                                  stream gets a wav with zero samples, which ``load_audio`` answers
                                  with ``NoAudioError`` exactly as it does for the raw video
    manifest.jsonl                one JSON line per processed video: video_id, status ("ok" or
                                  "error"), duration, fps, has_audio, n_frames, audio_seconds, error

Why it is built this way:

* *Same tensors as the raw route.* Frames come from ``read_one_fps`` (the decoder the raw route
  uses) and are stored at their native resolution; the CLIP transform runs at load time in both
  routes. JPEG at quality 95 with 4:4:4 chroma keeps the difference to the raw route small (see
  ``tests/test_prepare_data.py`` for the measured bound); ``image_format="png"`` is bit-exact.
  Audio is ``clip4vla.audio.load_audio`` with ``max_seconds=None`` (the 60-s centre crop happens
  at load time, as for raw videos) stored as 32-bit float wav, so reading it back gives the very
  same samples.
* *Resumable and crash-safe.* An item counts as done only once its manifest line is written, and
  that happens after its outputs were renamed from temporary names into place; a killed run
  leaves at most temporary files (removed on the next run) and a half-written last line
  (ignored). A rerun skips items the manifest lists as done.
* *One bad file never stops the run*: the error is recorded in the manifest with its reason
  (rerun with ``retry_errors=True`` to try those again).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from clip4vla.audio import NoAudioError, load_audio
from clip4vla.data.records import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS
from clip4vla.video.decode import frame_filename, read_one_fps

__all__ = ["PrepareSummary", "decode_media", "encode_frame", "find_videos", "read_manifest", "prepare_videos"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
AUDIO_RATE = 16000
_TMP_MARK = ".tmp-"


@dataclasses.dataclass
class PrepareSummary:
    """What one call did: counts, plus the ids that failed in this call."""

    total: int  # videos found
    skipped: int  # already done according to the manifest
    done: int  # processed successfully now
    failed: list[str]  # video ids that failed now (reasons are in the manifest)
    manifest: Path


@dataclasses.dataclass(frozen=True)
class _Options:
    out_dir: str
    image_format: str
    quality: int
    audio_subtype: str


def find_videos(videos_dir: str | Path) -> dict[str, Path]:
    """``video_id`` (file stem) -> path, for every video (or audio-only) file under ``videos_dir``
    (recursive). Audio-only files (ESC-50 wavs) are prepared to a wav and no frames."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"{videos_dir}: videos folder not found")
    found: dict[str, Path] = {}
    clashes: list[str] = []
    for p in sorted(videos_dir.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS + AUDIO_EXTENSIONS and not p.name.startswith("."):
            if p.stem in found:
                clashes.append(f"{found[p.stem]} / {p}")
            found[p.stem] = p
    if clashes:
        raise ValueError(f"{videos_dir}: several files give the same video_id: {clashes[:5]}")
    return found


def read_manifest(out_dir: str | Path) -> dict[str, dict]:
    """The latest manifest record per ``video_id`` (later lines override earlier ones).

    A line that is not valid JSON can only be the last line of a killed run; it is ignored.
    """
    path = Path(out_dir) / MANIFEST
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: ignoring an unreadable manifest line (interrupted write?)", path, lineno)
                continue
            if isinstance(rec, dict) and "video_id" in rec:
                records[str(rec["video_id"])] = rec
    return records


# ------------------------------------------------------------------------------- one video
def encode_frame(img: np.ndarray, image_format: str, quality: int) -> bytes:
    """One 1-fps frame as the prepared routes store it (folder files and shard members alike)."""
    buffer = io.BytesIO()
    if image_format == "jpg":
        # 4:4:4 chroma: the frames are already 4:2:0 from the codec; subsampling them a second
        # time (PIL's default) would roughly double the difference to the raw route.
        Image.fromarray(img).save(buffer, format="JPEG", quality=quality, subsampling=0)
    else:
        Image.fromarray(img).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_media(video_path: str | Path, image_format: str = "jpg", quality: int = 95
                 ) -> tuple[dict, list[tuple[int, bytes]], np.ndarray | None]:
    """Decode a video (or audio file) once: ``(info, [(second, encoded frame)], wave [N, 2] or None)``.

    ``info``: duration, fps, has_audio, n_frames, audio_seconds. Raises on unreadable media.
    """
    info: dict = {"duration": None, "fps": None, "has_audio": False, "n_frames": 0, "audio_seconds": None}
    frames: list[tuple[int, bytes]] = []
    if Path(video_path).suffix.lower() not in AUDIO_EXTENSIONS:
        seconds, rgb, stream = read_one_fps(video_path)
        if not seconds:
            raise ValueError("no decodable frames")
        info.update(duration=stream.duration, fps=stream.fps, n_frames=len(seconds))
        frames = [(sec, encode_frame(img, image_format, quality)) for sec, img in zip(seconds, rgb)]
    try:
        wave = load_audio(video_path, sample_rate=AUDIO_RATE, max_seconds=None)  # [2, N]
    except NoAudioError:
        wave = None
    if wave is not None:
        info.update(has_audio=True, audio_seconds=wave.shape[1] / AUDIO_RATE)
    return info, frames, None if wave is None else wave.numpy().T


def _prepare_one(job: tuple[str, str, _Options]) -> dict:
    video_id, video_path, opts = job
    out = Path(opts.out_dir)
    final_frames = out / "frames" / video_id
    final_audio = out / "audio" / f"{video_id}.wav"
    tmp_frames = out / "frames" / f"{_TMP_MARK}{video_id}-{os.getpid()}"
    tmp_audio = out / "audio" / f"{_TMP_MARK}{video_id}-{os.getpid()}.wav"
    record: dict = {"video_id": video_id, "source": str(video_path), "status": "ok", "duration": None,
                    "fps": None, "has_audio": False, "n_frames": 0, "audio_seconds": None, "error": None}
    try:
        info, frames, wave = decode_media(video_path, opts.image_format, opts.quality)
        record.update(info)
        if frames:
            tmp_frames.mkdir(parents=True)
            for sec, data in frames:
                (tmp_frames / frame_filename(sec, opts.image_format)).write_bytes(data)
        samples = wave if wave is not None else np.zeros((0, 2), np.float32)  # [N, 2]
        # bytes: soundfile encodes a str name strictly, so a file name that is not UTF-8 (its id
        # carries the byte as a lone surrogate) would fail here while the shard route writes it
        sf.write(os.fsencode(tmp_audio), samples, AUDIO_RATE, subtype=opts.audio_subtype, format="WAV")
        # Commit: outputs move into place, the caller writes the manifest line afterwards.
        if frames:
            if final_frames.exists():
                shutil.rmtree(final_frames)
            os.replace(tmp_frames, final_frames)
        os.replace(tmp_audio, final_audio)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop a long run
        record.update(status="error", error=f"{type(exc).__name__}: {exc}")
        shutil.rmtree(tmp_frames, ignore_errors=True)
        tmp_audio.unlink(missing_ok=True)
    return record


def _worker_init() -> None:
    # Each worker is one process per core; torch's own thread pool would oversubscribe them.
    import torch

    torch.set_num_threads(1)


def _clean_temporaries(out: Path) -> None:
    for sub in ("frames", "audio"):
        for p in (out / sub).glob(f"{_TMP_MARK}*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _append(fh, record: dict) -> None:
    fh.write(json.dumps(record) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------- driver
def prepare_videos(
    videos_dir: str | Path,
    out_dir: str | Path,
    workers: int = 2,
    image_format: str = "jpg",
    quality: int = 95,
    audio_subtype: str = "FLOAT",
    retry_errors: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare every video under ``videos_dir`` into ``out_dir`` (see the module docstring).

    Args:
        workers: processes decoding in parallel (0 or 1: in this process).
        image_format: ``"jpg"`` (small, near-exact) or ``"png"`` (lossless, larger).
        quality: JPEG quality (95+ recommended; lower moves the prepared route away from raw).
        audio_subtype: soundfile subtype; ``"FLOAT"`` keeps the decoded samples exactly,
            ``"PCM_16"`` halves the size at ~1e-4 error.
        retry_errors: also redo videos whose manifest record is an error.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    if not sf.check_format("WAV", audio_subtype):
        raise ValueError(f"audio_subtype {audio_subtype!r} is not a WAV subtype soundfile can write")
    out = Path(out_dir)
    videos = find_videos(videos_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    _clean_temporaries(out)
    previous = read_manifest(out)
    todo = [
        vid for vid in videos
        if vid not in previous or (retry_errors and previous[vid].get("status") != "ok")
    ]
    opts = _Options(str(out), image_format, quality, audio_subtype)
    jobs = [(vid, str(videos[vid]), opts) for vid in todo]
    done, failed = 0, []

    manifest_path = out / MANIFEST
    if manifest_path.exists() and manifest_path.stat().st_size > 0:
        with manifest_path.open("rb+") as raw:  # a killed run may have left a line without "\n"
            raw.seek(-1, os.SEEK_END)
            if raw.read(1) != b"\n":
                raw.write(b"\n")
    with manifest_path.open("a", encoding="utf-8") as fh:
        bar = tqdm(total=len(jobs), desc="prepare", unit="video", disable=not progress)

        def consume(record: dict) -> None:
            nonlocal done
            _append(fh, record)
            if record["status"] == "ok":
                done += 1
            else:
                failed.append(record["video_id"])
                log.warning("%s: %s", record["video_id"], record["error"])
            bar.update()

        if workers > 1 and len(jobs) > 1:
            ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")
            with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
                for record in pool.imap_unordered(_prepare_one, jobs):
                    consume(record)
        else:
            for job in jobs:
                consume(_prepare_one(job))
        bar.close()
    return PrepareSummary(total=len(videos), skipped=len(videos) - len(todo), done=done, failed=failed,
                          manifest=manifest_path)
