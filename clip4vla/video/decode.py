"""Video frames at 1 fps, from a raw video (PyAV) or from prepared JPEG/PNG frames.

Both routes find the clip's available 1-fps seconds with the rule in
:mod:`clip4vla.video.sampling`, choose frames with the same :func:`choose_seconds`, and apply the
CLIP transform to all chosen frames in one batched call, so they return the same tensors (up to
JPEG loss; PNG prepared frames are bit-exact).

Raw-video decoding is two cheap passes instead of one expensive one:

1. *probe*: demux packets only (no decoding) to learn every frame's timestamp and the keyframes,
   which gives the second -> frame map before any pixel is decoded;
2. *decode*: seek to the keyframe before each chosen frame (only when a keyframe lies between the
   current position and the target, otherwise keep decoding forward) and convert only the chosen
   frames to RGB. A 12-frame pick from a long video decodes a few GOPs, not the whole file.

Streams without timestamps fall back to decoding every frame in order (same rule, frame times
from the frame rate).

Prepared layout (written by ``clip4vla.data.prepare``): ``<frames_dir>/<sec>.jpg`` where ``sec`` is
the integer second of the 1-fps rule, zero-padded to 6 digits (``000003.jpg`` = the frame kept for
second 3). A missing second (gap in the video) simply has no file.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import av
import numpy as np
import torch
from PIL import Image

from clip4vla.media_errors import MediaError
from clip4vla.video.sampling import choose_seconds, pad_frames, second_of, span_bounds
from clip4vla.video.transform import clip_transform

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "FRAME_NAME_DIGITS",
    "frame_filename",
    "list_prepared_seconds",
    "read_one_fps",
    "load_video_frames",
    "load_prepared_frames",
]

FRAME_NAME_DIGITS = 6
_THREADED_PIXELS = 1280 * 720  # use decoder threads from HD upwards
_FRAME_NAME = re.compile(r"^(\d{%d})\.(jpg|png)$" % FRAME_NAME_DIGITS)


class VideoDecodeError(MediaError):
    """A video file (or prepared frame folder) cannot give frames; the message names the path."""


@dataclasses.dataclass
class VideoInfo:
    """What one decode learned about the video stream (``prepare`` writes it to its manifest)."""

    duration: float | None  # seconds of the video stream, None if the container does not say
    fps: float | None  # average frame rate
    seconds: list[int]  # every available 1-fps second inside the requested span, ascending


def frame_filename(sec: int, ext: str = "jpg") -> str:
    """Prepared-frame file name for second ``sec`` (``000003.jpg``)."""
    return f"{sec:0{FRAME_NAME_DIGITS}d}.{ext}"


# --------------------------------------------------------------------------------------- opening
def _open(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    if not path.exists():
        raise VideoDecodeError(f"{path}: file not found")
    if path.is_dir():
        raise VideoDecodeError(f"{path}: is a directory, expected a video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: zero-length file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as exc:  # garbage, truncated moov, unknown format
        raise VideoDecodeError(f"{path}: not a readable media container ({exc})") from exc
    if not container.streams.video:
        held: dict[str, int] = {}
        for s in container.streams:  # before close(), which empties the list
            held[s.type] = held.get(s.type, 0) + 1
        container.close()
        what = ", ".join(f"{n} {kind} stream{'s' if n > 1 else ''}" for kind, n in held.items()) or "no streams at all"
        raise VideoDecodeError(f"{path}: no video stream (the file has {what})")
    stream = container.streams.video[0]
    # Decoder threads pay off only on large frames: starting them costs more than decoding a few
    # small frames (measured on the 2-core machine: 112x112 clips 8-10 ms/clip with "AUTO" vs 3 ms
    # single-threaded; 320x240 34-38 vs 25-27 ms). Output is identical either way.
    ctx = stream.codec_context
    stream.thread_type = "AUTO" if (ctx.width or 0) * (ctx.height or 0) >= _THREADED_PIXELS else "NONE"
    return container, stream


def _stream_duration(stream: av.video.stream.VideoStream) -> float | None:
    """Duration the container declares for the stream (mp4: header; mkv: the DURATION tag)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        m = re.match(r"^(\d+):(\d+):(\d+(?:\.\d+)?)$", tag.strip())
        if m:
            return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    return None


def _fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    return float(rate) if rate else None


# ----------------------------------------------------------------------------------------- probe
@dataclasses.dataclass
class _Probe:
    second_pts: dict[int, int]  # second -> pts of the frame kept for it
    keyframes: list[int]  # sorted pts of the keyframes seen in the probed region
    last_time: float | None  # time of the last frame seen (seconds from origin)


def _rewind(container: av.container.InputContainer) -> None:
    container.seek(0)  # global AV_TIME_BASE offset 0, backward: the very first keyframe


def _probe(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    origin: int,
    lo: int,
    hi: int | None,
) -> _Probe | None:
    """Map seconds in ``[lo, hi)`` to frame pts by demuxing only. None: no usable timestamps."""
    tb = stream.time_base

    def time_of(ts: int) -> float:
        return float((ts - origin) * tb)

    def demux(seeked: bool) -> tuple[list[tuple[int, bool]], bool] | None:
        packets: list[tuple[int, bool]] = []
        reached_eof = True
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0:  # the demuxer's end-of-stream marker
                    continue
                ts = pkt.pts if pkt.pts is not None else pkt.dts
                if ts is None:
                    return None
                if seeked and not packets and time_of(ts) > lo + 1e-6:
                    # The seek landed after the first frame we need (imprecise index): redo from 0.
                    return [], False
                packets.append((ts, pkt.is_keyframe))
                # pts >= dts and dts only grows: once dts passes the span, no later frame is inside.
                if hi is not None and pkt.dts is not None and second_of(time_of(pkt.dts)) >= hi:
                    reached_eof = False
                    break
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{path}: corrupt video data while reading packets ({exc})") from exc
        return packets, reached_eof

    result = None
    if lo > 0:
        container.seek(origin + math.floor(lo / tb), stream=stream, backward=True)
        result = demux(seeked=True)
        if result is not None and not result[0]:  # the seek overshot: demux from the start
            _rewind(container)
            result = demux(seeked=False)
    else:
        result = demux(seeked=False)
    if result is None:
        return None
    packets, reached_eof = result
    if not packets:
        raise VideoDecodeError(f"{path}: the video stream has no frames")

    pts_sorted = sorted(ts for ts, _ in packets)
    if reached_eof:
        _check_not_truncated(path, stream, len(packets), time_of(pts_sorted[-1]), lo == 0)
    second_pts: dict[int, int] = {}
    for ts in pts_sorted:  # ascending, so the first frame of each second wins
        s = second_of(time_of(ts))
        if s < lo or (hi is not None and s >= hi):
            continue
        second_pts.setdefault(s, ts)
    keyframes = sorted(ts for ts, key in packets if key)
    return _Probe(second_pts, keyframes, time_of(pts_sorted[-1]))


def _check_not_truncated(path: Path, stream, n_packets: int, last_time: float, from_start: bool) -> None:
    """A container cut short often still opens (mkv, fragmented mp4): compare with its header."""
    # Small slack: edit lists and encoder quirks can make the header count differ by a frame or two.
    if from_start and stream.frames and stream.frames - n_packets > max(2, 0.02 * stream.frames):
        raise VideoDecodeError(
            f"{path}: truncated video ({n_packets} of {stream.frames} frames present)"
        )
    declared = _stream_duration(stream)
    if declared is not None and last_time < declared - max(1.0, 0.05 * declared):
        raise VideoDecodeError(
            f"{path}: truncated video (frames stop at {last_time:.2f} s, header says {declared:.2f} s)"
        )


# ---------------------------------------------------------------------------------------- decode
class _NoFrameTimestamps(Exception):
    """Packets had timestamps but decoded frames do not: switch to the sequential fallback."""


def _to_rgb(frame: av.VideoFrame, shape: tuple[int, int] | None) -> np.ndarray:
    if shape is not None and (frame.height, frame.width) != shape:  # resolution change mid-stream
        return frame.to_ndarray(format="rgb24", width=shape[1], height=shape[0])
    return frame.to_ndarray(format="rgb24")


def _decode_targets(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: Sequence[int],
    keyframes: Sequence[int],
) -> dict[int, np.ndarray]:
    """RGB arrays of the frames with the given pts (ascending), seeking between distant targets."""
    out: dict[int, np.ndarray] = {}
    shape: tuple[int, int] | None = None
    i = 0
    can_seek = True
    pending_seek = True

    def keyframe_before(ts: int) -> int | None:
        j = bisect.bisect_right(keyframes, ts) - 1
        return keyframes[j] if j >= 0 else None

    try:
        while i < len(targets):
            if pending_seek:
                kf = keyframe_before(targets[i]) if can_seek else None
                if kf is None:
                    _rewind(container)
                else:
                    container.seek(kf, stream=stream, backward=True)
            pending_seek = False
            first = True
            for frame in container.decode(stream):
                ts = frame.pts
                if ts is None:
                    raise _NoFrameTimestamps
                if ts > targets[i]:
                    if first and can_seek:  # seek overshot: decode from the start instead
                        can_seek, pending_seek = False, True
                        break
                    raise VideoDecodeError(
                        f"{path}: frame at {float(targets[i] * stream.time_base):.3f} s could not be "
                        "decoded (damaged stream)"
                    )
                first = False
                if ts < targets[i]:
                    continue
                rgb = _to_rgb(frame, shape)
                shape = rgb.shape[:2]
                out[ts] = rgb
                i += 1
                if i == len(targets):
                    break
                # Jump ahead when a keyframe separates us from the next target: seeking there is
                # cheaper than decoding every frame in between.
                nxt = keyframe_before(targets[i])
                if can_seek and nxt is not None and nxt > ts:
                    pending_seek = True
                    break
            else:
                if i < len(targets):
                    raise VideoDecodeError(
                        f"{path}: stream ended before the frame at "
                        f"{float(targets[i] * stream.time_base):.3f} s (truncated?)"
                    )
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{path}: corrupt video data ({exc})") from exc
    return out


def _decode_sequential(
    path: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream, lo: int, hi: int | None
) -> tuple[dict[int, np.ndarray], float | None]:
    """Fallback for streams without packet timestamps: decode everything, keep 1 frame per second.

    ``container`` must be freshly opened (elementary streams such as raw ``.h264`` cannot seek).
    """
    rate = _fps(stream)
    kept: dict[int, np.ndarray] = {}
    shape = None
    last_t = None
    try:
        for index, frame in enumerate(container.decode(stream)):
            if frame.time is not None:
                t = float(frame.time) - float((stream.start_time or 0) * stream.time_base)
            elif rate:
                t = index / rate
            else:
                raise VideoDecodeError(f"{path}: frames carry no timestamps and the stream has no frame rate")
            last_t = t
            s = second_of(t)
            if s < lo or s in kept:
                continue
            if hi is not None and s >= hi:
                break
            rgb = _to_rgb(frame, shape)
            shape = rgb.shape[:2]
            kept[s] = rgb
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{path}: corrupt video data ({exc})") from exc
    if last_t is None:
        raise VideoDecodeError(f"{path}: the video stream has no frames")
    return kept, last_t


def read_one_fps(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    choose: Callable[[list[int]], list[int]] | None = None,
) -> tuple[list[int], np.ndarray, VideoInfo]:
    """Decode the 1-fps frames of ``[start, end)`` that ``choose`` keeps.

    Args:
        path: video file.
        start, end: optional span in seconds (see :mod:`clip4vla.video.sampling` for the rule).
        choose: maps the ascending list of available seconds to the seconds wanted, in output
            order; ``None`` keeps all of them (what ``prepare`` writes).

    Returns:
        ``(seconds, frames uint8 [K, H, W, 3] in the order of seconds, info)``.
    """
    path = Path(path)
    lo, hi = span_bounds(start, end)
    container, stream = _open(path)
    try:
        origin = stream.start_time if stream.start_time is not None else 0
        probe = _probe(path, container, stream, origin, lo, hi)
        chosen: tuple[list[int], list[int]] | None = None  # (available, wanted) of the fast path
        if probe is not None:
            available = sorted(probe.second_pts)
            wanted = choose(available) if choose is not None else available
            chosen = (available, wanted)
            targets = sorted({probe.second_pts[s] for s in wanted})
            try:
                by_pts = _decode_targets(path, container, stream, targets, probe.keyframes) if targets else {}
                frames = [by_pts[probe.second_pts[s]] for s in wanted]
            except _NoFrameTimestamps:
                probe = None
            last_time = probe.last_time if probe is not None else None
        if probe is None:
            container.close()
            container, stream = _open(path)
            kept, last_time = _decode_sequential(path, container, stream, lo, hi)
            available = sorted(kept)
            if chosen is not None and chosen[0] == available:
                wanted = chosen[1]  # do not draw from a shuffling generator twice
            else:
                wanted = choose(available) if choose is not None else available
            frames = [kept[s] for s in wanted]
        duration = _stream_duration(stream)
        fps = _fps(stream)
        if duration is None and last_time is not None:
            duration = last_time + (1.0 / fps if fps else 0.0)
        info = VideoInfo(duration=duration, fps=fps, seconds=available)
    finally:
        container.close()
    stacked = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    return list(wanted), stacked, info


# ------------------------------------------------------------------------------- public loaders
def _check_span_not_empty(where: Path, seconds: list[int], start: float | None, end: float | None) -> None:
    if not seconds:
        raise VideoDecodeError(f"{where}: no frames in the span [{start}, {end}) (the video is shorter?)")


def _finish(rgb: np.ndarray, max_frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # [K,3,H,W] uint8
    frames = clip_transform(frames, size)  # one batched resize/crop/normalise for all frames
    return pad_frames(frames, max_frames)


def load_video_frames(
    path: str | Path,
    max_frames: int = 12,
    sampling: str = "uniform",
    order: str = "normal",
    start: float | None = None,
    end: float | None = None,
    size: int = 224,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-fps CLIP-normalised frames of a video (or of its ``[start, end)`` span).

    Returns:
        frames float32 ``[max_frames, 3, size, size]`` (zero rows after the real frames) and
        mask bool ``[max_frames]`` (True on real frames).

    Raises:
        VideoDecodeError: missing/empty/corrupt/truncated file, no video stream, or no frame in
            the span.
    """
    choose = functools.partial(
        choose_seconds, max_frames=max_frames, sampling=sampling, order=order, generator=generator
    )
    # Validate options before touching the file so a typo is not reported as a media error.
    choose_seconds([], max_frames, sampling, order)
    seconds, rgb, _ = read_one_fps(path, start, end, choose)
    _check_span_not_empty(Path(path), seconds, start, end)
    return _finish(rgb, max_frames, size)


def list_prepared_seconds(frames_dir: str | Path) -> dict[int, Path]:
    """Second -> file of a prepared frame folder (``000003.jpg`` / ``000003.png``)."""
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise VideoDecodeError(f"{frames_dir}: prepared frame folder not found")
    found: dict[int, Path] = {}
    for p in frames_dir.iterdir():
        m = _FRAME_NAME.match(p.name)
        if m:
            s = int(m.group(1))
            if s in found:
                raise VideoDecodeError(f"{frames_dir}: second {s} has two files ({found[s].name}, {p.name})")
            found[s] = p
    if not found:
        raise VideoDecodeError(f"{frames_dir}: no prepared frames (expected files like {frame_filename(0)})")
    return found


def _read_image(source: Any, name: Any = None) -> np.ndarray:
    """An image file (path or open binary file) as RGB ``uint8 [H, W, 3]``."""
    try:
        with Image.open(source) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoDecodeError(f"{name or source}: unreadable prepared frame ({exc})") from exc


def load_prepared_frames(
    frames_dir: str | Path,
    max_frames: int = 12,
    sampling: str = "uniform",
    order: str = "normal",
    start: float | None = None,
    end: float | None = None,
    size: int = 224,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as :func:`load_video_frames`, from ``<frames_dir>/<sec>.jpg`` files."""
    choose_seconds([], max_frames, sampling, order)
    frames_dir = Path(frames_dir)
    files = list_prepared_seconds(frames_dir)
    return load_frame_images({s: (lambda p=p: p) for s, p in files.items()}, frames_dir, max_frames, sampling, order,
                             start, end, size, generator)


def load_frame_images(
    images: dict[int, Callable[[], Any]],
    name: Any,
    max_frames: int = 12,
    sampling: str = "uniform",
    order: str = "normal",
    start: float | None = None,
    end: float | None = None,
    size: int = 224,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prepared route's frame choice and transform over 1-fps images from anywhere:
    ``images`` maps a second to a function giving its image (a path or an open binary file, read
    only when chosen); ``name`` says where they come from in messages."""
    choose_seconds([], max_frames, sampling, order)
    lo, hi = span_bounds(start, end)
    available = sorted(s for s in images if s >= lo and (hi is None or s < hi))
    _check_span_not_empty(name, available, start, end)
    wanted = choose_seconds(available, max_frames, sampling, order, generator)
    pictures = []
    for s in wanted:
        source = images[s]()
        pictures.append(_read_image(source, source if isinstance(source, (str, Path)) else f"{name} second {s}"))
    if len({im.shape for im in pictures}) > 1:
        raise VideoDecodeError(f"{name}: prepared frames have different sizes {sorted({im.shape for im in pictures})}")
    return _finish(np.stack(pictures), max_frames, size)
