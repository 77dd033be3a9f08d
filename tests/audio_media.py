"""Audio media the audio tests write for themselves (no downloads, no fixtures needed).

Signals are numpy ``float32 [channels, samples]`` in [-1, 1]; writers put them into real
files with soundfile (wav/flac/ogg) or PyAV (video containers with an audio track).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf


def tone(freq: float, seconds: float, rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(f0: float, f1: float, seconds: float, rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """Linear sweep from f0 to f1 Hz."""
    t = np.arange(int(round(seconds * rate))) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
    return (amplitude * np.sin(phase)).astype(np.float32)


def noise(seconds: float, rate: int = 16000, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(round(seconds * rate)))).astype(np.float32)


def stereo(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.stack([left, right]).astype(np.float32)


def write_sound(path: Path, signal: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    """``signal`` ``[samples]`` or ``[channels, samples]`` -> file; format from the suffix."""
    data = signal.T if signal.ndim == 2 else signal
    sf.write(str(path), data, rate, subtype=subtype)
    return Path(path)


def write_video(
    path: Path,
    seconds: float = 1.0,
    audio: np.ndarray | None = None,
    rate: int = 44100,
    audio_codec: str = "aac",
    fps: int = 8,
    size: int = 32,
    audio_block: int = 1024,
) -> Path:
    """A small video (mpeg4, ``size`` x ``size``) with an optional audio track ``[C, N]``."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        track = None
        if audio is not None:
            track = container.add_stream(audio_codec, rate=rate)
            track.layout = "stereo" if audio.shape[0] == 2 else "mono"
            if audio_codec.startswith("pcm_s16"):
                track.format = "s16"
        for i in range(int(round(seconds * fps))):
            image = np.full((size, size, 3), (37 * i) % 256, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if track is not None:
            _encode_audio(container, track, audio, rate, audio_block)
    return Path(path)


def _encode_audio(container, track, audio: np.ndarray, rate: int, block: int = 1024) -> None:
    layout = track.layout.name
    pts = 0
    for first in range(0, audio.shape[1], block):
        chunk = np.ascontiguousarray(audio[:, first:first + block], dtype=np.float32)
        if track.format.name == "s16":      # interleaved 16-bit PCM
            ints = np.round(chunk.T * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(ints, format="s16", layout=layout)
        else:
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = pts
        pts += chunk.shape[1]
        for packet in track.encode(frame):
            container.mux(packet)
    for packet in track.encode():
        container.mux(packet)


def dominant_frequency(signal: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[int(np.argmax(spectrum))])
