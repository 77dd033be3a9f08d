"""Decode an audio file (or the audio track of a video) to 16 kHz stereo float.

Two back-ends, tried in this order:

* ``soundfile`` (libsndfile) for plain audio files (wav, flac, ogg/vorbis/opus, mp3, aiff,
  ...): exact sample counts and seeking.
* ``PyAV`` (FFmpeg) for everything libsndfile does not recognise, in particular the audio
  track of video containers (mp4, mkv, avi, webm, ...).

The result is always ``float32 [2, N]`` at ``sample_rate``:

* mono is duplicated into both channels (as REF ``get_raw_audio`` does);
* more than two channels: the first two are kept. WAV/FLAC/AAC channel order puts
  front-left and front-right first, so for 5.1 or quad files this keeps the front pair;
* any other rate is resampled with ``torchaudio.functional.resample`` (all channels in one
  call). REF only resampled rates *above* the target (with a call that fails on librosa
  >= 0.10); we resample both ways, so 8 kHz files get the same mel axis as 16 kHz ones.

Reading a range ``[start, end)`` gives the same samples as decoding the whole file and then
slicing it at the target rate: the back-ends read a margin around the range, start on a
source sample that lies on the target-rate grid, and the exact cut happens after resampling.

Errors are typed (subclasses of :class:`~clip4vla.media_errors.MediaError`) and name the
file, so a data loader can decide what to do instead of training on silent zeros.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from clip4vla.media_errors import MediaError

__all__ = ["AudioDecodeError", "NoAudioError", "load_audio", "load_audio_file"]

# Extra source audio read on each side of the requested range, so that the resampling
# filter (about 10 ms wide at its default settings) sees real context, not zero padding.
_MARGIN_S = 0.05
# PyAV seeks only for ranges starting this late: decoding from the beginning is cheap for
# short clips and makes a range bit-identical to slicing the full decode (after a seek,
# lossy decoders such as AAC can differ by ~1e-5, e.g. through noise substitution).
_SEEK_MIN_S = 30.0
# Lossy codecs (AAC, Vorbis, Opus) overlap neighbouring frames: the first frame decoded
# after a seek is incomplete. Seeking this much earlier keeps it out of the kept range.
_PREROLL_S = 0.25
# A stream may legitimately end slightly before the duration its container declares
# (encoder padding, rounding); a larger shortfall is reported as truncation.
_TRUNCATION_SLACK_S = 0.1
_TRUNCATION_SLACK_FRACTION = 0.05


class AudioDecodeError(MediaError):
    """The file is missing, empty, corrupt, in an unsupported format, or holds NaN/inf."""


class NoAudioError(MediaError):
    """The file is readable but has no audio stream, or the requested range has no samples."""


def load_audio(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = 16000,
    max_seconds: float | None = 60.0,
) -> torch.Tensor:
    """Read ``[start, end)`` seconds of ``path`` as float32 ``[2, N]`` at ``sample_rate``.

    ``start``/``end`` are seconds from the start of the audio stream; ``None`` means the
    stream's start/end, and a range running past the end of the stream is cut there. Sample
    ``j`` of the result is the target-rate sample at time ``round(start * sample_rate) + j``.
    Clips longer than ``max_seconds`` are centre-cropped; ``max_seconds=None``
    keeps everything. Unlike REF, the crop also works for mono files (REF indexed the 1-D
    mono array with two axes and the loader replaced the clip by zeros).

    A clip of a single sample is returned as ``[2, 1]``; the front-ends accept it.

    Raises:
        AudioDecodeError: missing/empty/corrupt/unsupported file, NaN or inf samples.
        NoAudioError: readable file without an audio stream, or no samples in the range.
        ValueError: invalid arguments (negative start, end <= start, ...).
    """
    path = Path(path)
    _check_arguments(path, start, end, sample_rate, max_seconds)
    _check_file(path)
    want = _Request(start=start, end=end, rate=int(sample_rate), max_seconds=max_seconds)

    try:
        read = _read_soundfile(os.fsencode(path), want, path)  # bytes: names that are not UTF-8 open too
    except _NotForSoundfile as sf_exc:
        read = _read_pyav(path, want, sf_reason=str(sf_exc))

    waveform = _resample_and_cut(path, read, want)
    if not torch.isfinite(waveform).all():
        raise AudioDecodeError(f"{path}: decoded samples contain NaN or inf")
    return _to_stereo(waveform)


def load_audio_file(
    fileobj: Any,
    name: str,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = 16000,
    max_seconds: float | None = 60.0,
) -> torch.Tensor:
    """:func:`load_audio` for an open binary file soundfile can read (wav, flac, ...), e.g. a
    member of a tar shard; only the bytes the range needs are read. ``name`` goes into messages."""
    where = Path(name)
    _check_arguments(where, start, end, sample_rate, max_seconds)
    want = _Request(start=start, end=end, rate=int(sample_rate), max_seconds=max_seconds)
    try:
        read = _read_soundfile(fileobj, want, where)
    except _NotForSoundfile as exc:
        raise AudioDecodeError(f"{name}: not an audio file soundfile can read ({exc})") from exc
    waveform = _resample_and_cut(where, read, want)
    if not torch.isfinite(waveform).all():
        raise AudioDecodeError(f"{name}: decoded samples contain NaN or inf")
    return _to_stereo(waveform)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Request:
    start: float | None
    end: float | None
    rate: int
    max_seconds: float | None

    def target_window(self, total: int | None) -> tuple[int, int | None]:
        """Target-rate sample range ``[a, b)`` to return, ``b=None`` if the length is unknown.

        ``total`` is the stream length in target samples (exact for soundfile, the declared
        duration for PyAV, or None). The centre crop is applied here when the length is known.
        """
        a = 0 if self.start is None else int(round(self.start * self.rate))
        b = None if self.end is None else int(round(self.end * self.rate))
        if total is not None:
            b = total if b is None else min(b, total)
        if b is not None:
            b = max(a, b)
            a, b = _centre(a, b, self.max_len)
        return a, b

    @property
    def max_len(self) -> int | None:
        return None if self.max_seconds is None else int(round(self.max_seconds * self.rate))


@dataclass
class _Read:
    samples: torch.Tensor      # float32 [C, n] at the source rate
    rate: int                  # source sample rate
    first: int                 # source index of samples[:, 0]; a multiple of _grid(rate, target)
    reached_end: bool          # True when samples run to the end of the stream
    window: tuple[int, int | None]   # the target window planned before reading


def _grid(source_rate: int, target_rate: int) -> int:
    """Source-sample step on which source and target sample grids coincide.

    ``torchaudio.functional.resample`` is shift-invariant in steps of this many input
    samples, so resampling a slice that starts on this grid reproduces the full-file output.
    """
    return source_rate // math.gcd(source_rate, target_rate)


def _source_range(window: tuple[int, int | None], source_rate: int, target_rate: int) -> tuple[int, int | None]:
    """Source samples to read for a target window: margins added, start snapped to the grid."""
    a, b = window
    margin = int(math.ceil(_MARGIN_S * source_rate))
    step = _grid(source_rate, target_rate)
    lo = max(0, a * source_rate // target_rate - margin)
    lo -= lo % step
    hi = None if b is None else -(-b * source_rate // target_rate) + margin
    return lo, hi


def _centre(a: int, b: int, max_len: int | None) -> tuple[int, int]:
    if max_len is None or b - a <= max_len:
        return a, b
    a += (b - a - max_len) // 2   # REF: int(n/2 - max/2), the same for integers
    return a, a + max_len


def _resample_and_cut(path: Path, read: _Read, want: _Request) -> torch.Tensor:
    samples = read.samples[:2]
    if read.rate != want.rate and samples.shape[1] > 0:
        samples = AF.resample(samples.contiguous(), orig_freq=read.rate, new_freq=want.rate)
    offset = read.first * want.rate // read.rate          # exact: first is on the grid
    a, b = read.window
    if b is None or read.reached_end:
        available = offset + samples.shape[1]
        b = available if b is None else min(b, available)
        a, b = _centre(a, max(a, b), want.max_len)
    cut = samples[:, max(0, a - offset):max(0, b - offset)]
    if cut.shape[1] == 0:
        where = "" if want.start is None and want.end is None else f" in [{want.start}, {want.end}) s"
        raise NoAudioError(f"{path}: audio stream has no samples{where}")
    return cut


# --------------------------------------------------------------------------- checks


def _check_arguments(
    path: Path, start: float | None, end: float | None, sample_rate: int, max_seconds: float | None
) -> None:
    if start is not None and (not math.isfinite(start) or start < 0):
        raise ValueError(f"{path}: start must be a finite number >= 0 seconds, got {start!r}")
    if end is not None and not math.isfinite(end):
        raise ValueError(f"{path}: end must be a finite number of seconds, got {end!r}")
    if end is not None and end <= (start or 0.0):
        raise ValueError(f"{path}: end ({end}) must be greater than start ({start or 0.0})")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds!r}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioDecodeError(f"{path}: file not found")
    if not path.is_file():
        raise AudioDecodeError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: file is empty (0 bytes)")


# --------------------------------------------------------------------------- soundfile


class _NotForSoundfile(Exception):
    """libsndfile does not recognise the file; PyAV gets a try."""


def _read_soundfile(source: Any, want: _Request, path: Path) -> _Read:
    """``source``: a file name or an open binary file; ``path`` names it in messages."""

    def rewound() -> Any:
        if not isinstance(source, (str, bytes)):
            source.seek(0)
        return source

    try:
        info = sf.info(rewound())
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _NotForSoundfile(str(exc)) from exc
    rate = int(info.samplerate)
    if info.frames == 0:
        raise NoAudioError(f"{path}: {info.format} file holds zero samples")
    # the exact stream length in target samples, as resample() would produce it
    total = -(-info.frames * want.rate // rate)
    window = want.target_window(total)
    lo, hi = _source_range(window, rate, want.rate)
    hi = info.frames if hi is None else min(hi, info.frames)
    try:
        data = sf.read(rewound(), start=lo, stop=max(lo, hi), dtype="float32", always_2d=True)[0]
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(f"{path}: corrupt {info.format} file ({exc})") from exc
    samples = torch.from_numpy(np.ascontiguousarray(data.T))
    return _Read(samples, rate, lo, reached_end=hi >= info.frames, window=window)


# --------------------------------------------------------------------------- PyAV


def _read_pyav(path: Path, want: _Request, sf_reason: str) -> _Read:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise AudioDecodeError(
            f"{path}: corrupt or unsupported media file (soundfile: {sf_reason}; PyAV: {exc})"
        ) from exc
    with container:
        if not container.streams.audio:
            raise NoAudioError(
                f"{path}: no audio stream (the container holds {len(container.streams)} other stream(s))"
            )
        stream = container.streams.audio[0]
        try:
            return _decode_stream(path, container, stream, want)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise AudioDecodeError(f"{path}: corrupt audio stream ({exc})") from exc


def _decode_stream(
    path: Path, container: av.container.InputContainer, stream: av.AudioStream, want: _Request
) -> _Read:
    rate = int(stream.codec_context.sample_rate or stream.rate or 0)
    if rate <= 0:
        raise AudioDecodeError(f"{path}: audio stream declares no sample rate")
    stream_start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    declared = _declared_duration(container, stream)
    # For a long file the declared duration locates the centre crop before decoding, so a
    # one-hour track is not decoded to keep one minute (declared durations are close, not
    # exact; the file's own samples decide everything else).
    window = want.target_window(None if declared is None else int(round(declared * want.rate)))
    lo, hi = _source_range(window, rate, want.rate)
    lo_time, hi_time = lo / rate, (None if hi is None else hi / rate)

    seeking = lo_time > max(_SEEK_MIN_S, _PREROLL_S) and stream.time_base is not None
    if seeking:
        target = int((lo_time - _PREROLL_S + stream_start) / stream.time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)
    # timestamps are rounded to the container's tick (1 ms in Matroska/WebM): position
    # differences up to one tick are rounding, not gaps
    tick = 0.0 if stream.time_base is None else float(stream.time_base)
    jitter = max(1, int(math.ceil(tick * rate)))

    chunks: list[np.ndarray] = []
    first: int | None = None        # source index of chunks[0][:, 0]
    n = 0
    reached_end = True
    for frame in container.decode(stream):
        if frame.samples == 0:
            continue
        data = _frame_to_planar_float(frame)                                   # [C, s]
        if first is None and not seeking and frame.time is not None and frame.time < stream_start:
            # some demuxers report a start time after the first decoded sample (codec
            # delay bookkeeping); decoding from the beginning, the audio starts at its
            # first sample
            stream_start = frame.time
        if frame.time is None:      # no timestamps: samples follow each other
            position = n if first is None else first + n
        else:
            position = int(round((frame.time - stream_start) * rate))
        if first is None:
            first = position
        elif abs(position - (first + n)) > jitter:
            # a real timestamp gap (fill with silence) or overlap (drop), so index == time
            shift = position - (first + n)
            data = (np.concatenate([np.zeros((data.shape[0], shift), np.float32), data], axis=1)
                    if shift > 0 else data[:, -shift:])
        if hi is not None and first + n >= hi:
            reached_end = False
            break
        chunks.append(data)
        n += data.shape[1]

    if first is None:
        return _Read(torch.zeros(1, 0), rate, lo, reached_end=True, window=window)
    samples = np.concatenate(chunks, axis=1)
    _check_not_truncated(path, (first + n) / rate, lo_time, hi_time, declared)
    # drop decoded audio before the read range, keeping the kept start on the sample grid
    skip = max(0, lo - first)
    skip += (-(first + skip)) % _grid(rate, want.rate)
    if declared is not None and reached_end:
        # encoders pad the last frame; the container's duration says where the audio ends
        stop = int(round(declared * rate)) - first
        samples = samples[:, :max(skip, stop)]
    samples = samples[:, skip:]
    tensor = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return _Read(tensor, rate, first + skip, reached_end=reached_end, window=window)


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """Length of the audio stream in seconds as the container states it (None if unknown)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_not_truncated(
    path: Path, reached: float, lo_time: float, hi_time: float | None, declared: float | None
) -> None:
    if declared is None:
        return
    expected = declared if hi_time is None else min(hi_time, declared)
    span = max(expected - lo_time, 0.0)
    if reached < expected - _TRUNCATION_SLACK_S - _TRUNCATION_SLACK_FRACTION * span:
        raise AudioDecodeError(
            f"{path}: audio stream ends at {reached:.3f} s but the container declares "
            f"{declared:.3f} s (truncated file?)"
        )


def _frame_to_planar_float(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 ``[channels, samples]`` whatever its sample format."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:          # interleaved: [1, samples * channels]
        array = array.reshape(-1, frame.layout.nb_channels).T
    kind = array.dtype
    if np.issubdtype(kind, np.floating):
        return array.astype(np.float32, copy=False)
    if kind == np.uint8:                     # u8 PCM is offset binary
        return (array.astype(np.float32) - 128.0) / 128.0
    return array.astype(np.float32) / float(np.iinfo(kind).max + 1)


# --------------------------------------------------------------------------- layout


def _to_stereo(waveform: torch.Tensor) -> torch.Tensor:
    """``[C, N]`` with C in {1, 2} (extra channels were dropped earlier) -> float32 ``[2, N]``."""
    if waveform.shape[0] == 1:
        waveform = waveform.expand(2, -1)
    return waveform.to(torch.float32).contiguous()
