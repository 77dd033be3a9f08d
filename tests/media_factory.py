"""Small test media written with PyAV (no downloads): videos whose frames carry their own index.

Every frame has three flat patches along the top edge that spell the frame index in four base-8 digits
(level ``16 + 32 * digit``, so H.264 at a high quality never moves a patch by more than a few grey
levels), over a moving bar so the encoder sees real motion. :func:`frame_index` reads the index
back from a decoded RGB frame, which lets tests check *which* frame a sampler picked.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

PATCH = 8  # side of one index patch in pixels
_DIGITS = 4  # base-8 digits -> indices < 4096 (needs width >= 32)


def frame_image(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """The RGB uint8 ``[H, W, 3]`` picture for frame ``index`` (moving bar + index patches)."""
    if not 0 <= index < 8**_DIGITS:
        raise ValueError(f"frame index must be in [0, {8 ** _DIGITS}), got {index}")
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 2] = np.linspace(40, 90, width, dtype=np.uint8)[None, :]  # a gentle blue ramp
    x = (index * 3) % max(width - 6, 1)
    img[PATCH + 2 :, x : x + 6, 1] = 200  # a green bar moving right
    for d in range(_DIGITS):
        digit = (index // 8**d) % 8
        img[:PATCH, d * PATCH : (d + 1) * PATCH, :] = 16 + 32 * digit
    return img


def frame_index(rgb: np.ndarray) -> int:
    """Inverse of :func:`frame_image` for a decoded (lossy) ``[H, W, 3]`` frame."""
    index = 0
    for d in range(_DIGITS):
        level = float(rgb[1 : PATCH - 1, d * PATCH + 1 : (d + 1) * PATCH - 1, :].mean())
        index += int(round((level - 16) / 32)) * 8**d
    return index


def write_video(
    path: str | Path,
    seconds: float = 3.0,
    fps: int | Fraction = 10,
    width: int = 64,
    height: int = 48,
    audio: bool = True,
    sample_rate: int = 16000,
    gop: int | None = None,
    bframes: int = 2,
    codec: str = "libx264",
) -> Path:
    """Write ``round(seconds*fps)`` indexed frames (H.264, crf 12) and optionally a stereo AAC tone.

    The container follows the extension (``.mp4``, ``.mkv``, ``.ts`` ...); ``fps`` may be a
    ``Fraction`` (e.g. NTSC ``Fraction(30000, 1001)``).

    ``gop`` is the keyframe interval in frames (default: the encoder's own, i.e. one keyframe),
    ``bframes`` > 0 makes presentation order differ from decode order, as in real files.
    """
    path = Path(path)
    fps = Fraction(fps)
    n_frames = int(round(seconds * fps))
    options = {"crf": "12", "preset": "veryfast", "bf": str(bframes)}
    if gop is not None:
        options.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
    with av.open(str(path), "w") as container:
        vs = container.add_stream(codec, rate=fps, options=options)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.thread_count = 1
        if audio:
            aus = container.add_stream("aac", rate=sample_rate, layout="stereo")
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / fps
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        if audio:
            t = np.arange(int(seconds * sample_rate)) / sample_rate
            left = 0.3 * np.sin(2 * np.pi * 440 * t)
            right = 0.3 * np.sin(2 * np.pi * 660 * t)
            wave = np.stack([left, right]).astype(np.float32)
            aframe = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
            aframe.sample_rate = sample_rate
            aframe.pts = 0
            for packet in aus.encode(aframe):
                container.mux(packet)
            for packet in aus.encode():
                container.mux(packet)
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0, sample_rate: int = 16000) -> Path:
    """An ``.m4a``-style MP4 with one AAC stream and no video stream."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        aus = container.add_stream("aac", rate=sample_rate, layout="mono")
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        aframe = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 300 * t))[None].astype(np.float32),
                                            format="fltp", layout="mono")
        aframe.sample_rate = sample_rate
        aframe.pts = 0
        for packet in aus.encode(aframe):
            container.mux(packet)
        for packet in aus.encode():
            container.mux(packet)
    return path


def write_garbage(path: str | Path, n_bytes: int = 4096, seed: int = 0) -> Path:
    """A file of random bytes with a video extension (not a container at all)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


def write_truncated(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes (a download cut short)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_empty(path: str | Path) -> Path:
    """A zero-length file."""
    path = Path(path)
    path.write_bytes(b"")
    return path
