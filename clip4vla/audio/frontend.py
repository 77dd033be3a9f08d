"""Waveform -> three-channel log-mel "image", batched in torch.

Input ``[2, N]`` (or ``[B, 2, N]``) stereo at 16 kHz; output ``[3, T, 224]`` (or
``[B, 3, T, 224]``): channels ``[left, (left + right) / 2, right]``, rows = time frames,
columns = mel bins with column 0 the lowest band.

Two front-ends:

``"kaldi"`` (paper, default)
    Kaldi fbank as ``torchaudio.compliance.kaldi.fbank`` computes it, with the paper's
    settings: 224 mel bins, 32 ms **Hamming** window (512 samples), 8 ms shift (128
    samples), dither 0. Kaldi defaults kept: ``snip_edges=True`` (only frames that fit:
    ``T = 1 + (N - 512) // 128``), ``remove_dc_offset=True``, pre-emphasis 0.97,
    ``round_to_power_of_two=True`` (FFT size 512), power spectrum, Kaldi mel banks from
    20 Hz to Nyquist, natural log with a floor of float32 eps, ``use_energy=False``,
    ``subtract_mean=False``, no VTLN. Output in natural-log units (roughly -16..+25).
    16 of Kaldi's 224 filters are empty at a 512-point FFT; they output ``log(eps)``.
    Clips shorter than one window (512 samples) are zero-padded to one window, giving one
    frame (``kaldi.fbank`` itself refuses them).

``"reference"`` (REF, ``rawaudio_util.wav2fbank``)
    librosa ``power_to_db(melspectrogram(y, sr, n_fft=512, hop_length=128, n_mels=224,
    fmax=8000))``: centred Hann-512 STFT (``T = 1 + N // 128``), power 2, 224 Slaney-scale,
    Slaney-normalised mel filters from 0 to 8000 Hz, ``10 * log10(max(S, 1e-10))`` and a floor
    80 dB below the maximum of each channel of each clip (``wav2fbank`` runs per channel).
    ``pad_mode="constant"`` (zero padding, librosa >= 0.9, which produced
    ``tests/fixtures/audio_frontend.npz``) or ``"reflect"`` (librosa <= 0.8, torch.stft).
    12 of the 224 filters are empty at this resolution; they sit at the floor, as in REF.

All-zero input is valid: ``kaldi`` gives ``log(eps) = -15.94`` everywhere, ``reference``
gives -100 dB everywhere (the floor is then -180 dB and never reached).

Both front-ends take a batch of clips of equal length in one call; callers group clips by
length or loop over clips (each call is still vectorised over frames and channels). Do not
zero-pad clips of different lengths into one batch: padding changes the last frames and
the per-clip maximum is then taken over the padding too.

Implementation: every step before the power spectrum (DC removal, pre-emphasis, window,
FFT) is linear, so the middle channel's spectrum is the mean of the left and right spectra;
two FFTs per clip instead of three. The mel projection skips the filterbank's zeros
(``_BandedFilterbank``). Work is chunked over clips so intermediates stay in cache, and the
intermediates live in a per-thread workspace reused across calls; within a chunk every step
is one tensor operation over (clip, channel, frame).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi

__all__ = ["FRONTENDS", "N_MELS", "log_mel", "reference_mel_filterbank", "frame_count"]

N_MELS = 224
FRONTENDS = ("kaldi", "reference")

# kaldi (paper): 32 ms window every 8 ms
_KALDI_FRAME_MS = 32.0
_KALDI_SHIFT_MS = 8.0
_KALDI_PREEMPHASIS = 0.97
_KALDI_LOW_HZ = 20.0
# reference (REF wav2fbank -> librosa)
_REF_N_FFT = 512
_REF_HOP = 128
_REF_FMAX = 8000.0
_REF_AMIN = 1e-10
_REF_TOP_DB = 80.0

# frame samples per processing chunk (~8 MB of float32): small enough to stay in cache
_CHUNK_FRAME_SAMPLES = 2 * 1024 * 1024


def log_mel(
    waveform: torch.Tensor,
    sample_rate: int = 16000,
    frontend: str = "kaldi",
    *,
    pad_mode: str = "constant",
) -> torch.Tensor:
    """Stereo waveform ``[2, N]`` / ``[B, 2, N]`` -> log-mel ``[3, T, 224]`` / ``[B, 3, T, 224]``.

    Float32 input gives float32 output; float64 input is computed in float64 (the REF
    pipeline's precision). ``pad_mode`` only applies to ``frontend="reference"``. This is
    preprocessing: it is not differentiable (intermediates are written in place).
    """
    x, batched = _check_waveform(waveform)
    if frontend == "kaldi":
        out = _kaldi_logmel(x, sample_rate)
    elif frontend == "reference":
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
        out = _reference_logmel(x, sample_rate, pad_mode)
    else:
        raise ValueError(f"unknown frontend {frontend!r}; choose one of {FRONTENDS}")
    return out if batched else out[0]


def frame_count(n_samples: int, sample_rate: int = 16000, frontend: str = "kaldi") -> int:
    """Number of time frames ``T`` that ``log_mel`` returns for ``n_samples`` samples."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if frontend == "kaldi":
        size, shift = _kaldi_sizes(sample_rate)[:2]
        return 1 + (max(n_samples, size) - size) // shift
    if frontend == "reference":
        return 1 + n_samples // _REF_HOP
    raise ValueError(f"unknown frontend {frontend!r}; choose one of {FRONTENDS}")


# --------------------------------------------------------------------------- checks


def _check_waveform(waveform: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.dim() not in (2, 3) or waveform.shape[-2] != 2:
        raise ValueError(f"waveform must be [2, N] or [B, 2, N] (stereo), got {list(waveform.shape)}")
    if waveform.shape[-1] < 1:
        raise ValueError(f"waveform has no samples: {list(waveform.shape)}")
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be floating point, got {waveform.dtype}")
    if waveform.dtype not in (torch.float32, torch.float64):
        waveform = waveform.float()
    # a finite sum proves every sample finite; the exact check (~50x slower) only runs when
    # the sum is not (NaN/inf present, or huge values that overflowed it)
    if not torch.isfinite(waveform.sum()) and not torch.isfinite(waveform).all():
        raise ValueError("waveform contains NaN or inf")
    batched = waveform.dim() == 3
    return (waveform if batched else waveform.unsqueeze(0)), batched


# --------------------------------------------------------------------------- shared core


FrameTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mel_power(
    signal: torch.Tensor,
    n_frames: int,
    frame_length: int,
    hop: int,
    n_fft: int,
    mel: _BandedFilterbank,
    prepare: FrameTransform,
) -> torch.Tensor:
    """Left/right signal ``[B, 2, ..., S]`` -> mel power of ``[L, (L+R)/2, R]``: ``[B, 3, T, n_mels]``.

    ``prepare(frames, out)`` turns the framed signal (a view ``[b, 2, ..., T, frame_length]``)
    into windowed frames written to ``out`` (``[b, 2, T, frame_length]``) and returns it.
    """
    batch = signal.shape[0]
    n_bins = n_fft // 2 + 1
    out = signal.new_empty(batch, 3, n_frames, mel.n_mels)
    step = max(1, min(batch, _CHUNK_FRAME_SAMPLES // (2 * n_frames * frame_length)))
    complex_dtype = torch.complex128 if signal.dtype == torch.float64 else torch.complex64
    buffers = _Buffers(
        frames=_scratch("frames", (step, 2, n_frames, frame_length), signal.dtype, signal.device),
        spectrum=_scratch("spectrum", (step, 2, n_frames, n_bins), complex_dtype, signal.device),
        power=_scratch("power", (step, 3, n_frames, n_bins), signal.dtype, signal.device),
        mid=_scratch("mid", (2, step, n_frames, n_bins), signal.dtype, signal.device),
    )
    for first in range(0, batch, step):   # chunks of clips, for cache locality only
        count = min(step, batch - first)
        frames = signal[first:first + count].unfold(-1, frame_length, hop).narrow(-2, 0, n_frames)
        windowed = prepare(frames, buffers.frames[:count])                    # [b, 2, T, L]
        spectrum = torch.fft.rfft(windowed, n=n_fft, out=buffers.spectrum[:count])
        power = _three_channel_power(spectrum, buffers.power[:count], buffers.mid[:, :count])
        mel.apply(power.view(-1, n_bins), out[first:first + count].view(-1, mel.n_mels))
    return out


@dataclass
class _Buffers:
    frames: torch.Tensor      # [b, 2, T, frame_length]
    spectrum: torch.Tensor    # [b, 2, T, F] complex
    power: torch.Tensor       # [b, 3, T, F]
    mid: torch.Tensor         # [2, b, T, F]: real and imaginary part of L + R


class _Workspace(threading.local):
    """Scratch tensors kept between calls, one set per thread (CPU only).

    A 10-s clip needs ~12 MB of intermediates. Allocated fresh on every call, that memory
    goes back to the OS at the end of the call and is page-faulted in again by the next one;
    on our 2-core VM those faults took longer than the FFTs (measured: 7.4 -> 4.2 ms per clip
    with the allocator told to keep memory). Buffers above ``_SCRATCH_MAX_BYTES`` are not
    kept, so very long clips do not pin memory. Results never alias this memory.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self.buffers.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype)
            if numel * buffer.element_size() <= _SCRATCH_MAX_BYTES:
                self.buffers[(name, dtype)] = buffer
        return buffer[:numel].view(shape)


_SCRATCH_MAX_BYTES = 64 * 1024 * 1024
_WORKSPACE = _Workspace()


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised intermediate; on GPU the caching allocator already reuses memory."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return _WORKSPACE.take(name, shape, dtype)


class _BandedFilterbank:
    """Mel projection ``power [N, F] @ bank.T`` that skips the zeros of the filterbank.

    Each mel filter is non-zero on a few FFT bins only (507 of 224 x 257 weights here), and
    neighbouring filters cover neighbouring bins. Cutting the filters into groups and
    multiplying each group by its own band of bins does about 7 % of the dense work, with
    the same sums (the skipped terms are exact zeros).
    """

    def __init__(self, bank: torch.Tensor, groups: int = 14):
        self.n_mels, self.n_bins = bank.shape
        self._converted: dict[tuple[torch.dtype, torch.device], _BandedFilterbank] = {}
        nonzero = bank != 0
        self.parts: list[tuple[int, int, int, int, torch.Tensor]] = []
        for rows in torch.arange(self.n_mels).chunk(groups):
            first, last = int(rows[0]), int(rows[-1]) + 1
            bins = nonzero[first:last].any(dim=0).nonzero().flatten()
            lo, hi = (int(bins[0]), int(bins[-1]) + 1) if bins.numel() else (0, 0)
            self.parts.append((first, last, lo, hi, bank[first:last, lo:hi].T.contiguous()))

    def to(self, dtype: torch.dtype, device: torch.device) -> _BandedFilterbank:
        """This filterbank with weights of ``dtype`` on ``device`` (cached)."""
        key = (dtype, device)
        if key not in self._converted:
            moved = object.__new__(_BandedFilterbank)
            moved.n_mels, moved.n_bins, moved._converted = self.n_mels, self.n_bins, {}
            moved.parts = [(a, b, lo, hi, w.to(dtype=dtype, device=device)) for a, b, lo, hi, w in self.parts]
            self._converted[key] = moved
        return self._converted[key]

    def apply(self, power: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``power [N, n_bins]`` -> ``out [N, n_mels]`` (written in place)."""
        for first, last, lo, hi, weights in self.parts:
            if hi == lo:                     # a group of empty filters
                out[:, first:last] = 0
            else:
                torch.mm(power[:, lo:hi], weights, out=out[:, first:last])
        return out


def _three_channel_power(spectrum: torch.Tensor, out: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """|X|^2 of left, middle, right from the left and right spectra ``[b, 2, T, F]``.

    Everything up to the FFT is linear, so X_mid = (X_left + X_right) / 2: two FFTs per
    clip instead of three, and no middle-channel waveform to frame.
    """
    real, imag = spectrum.real, spectrum.imag
    torch.mul(real, real, out=out[:, 0::2]).addcmul_(imag, imag)        # channels 0 (L), 2 (R)
    torch.add(real[:, 0], real[:, 1], out=mid[0])
    torch.add(imag[:, 0], imag[:, 1], out=mid[1])
    torch.mul(mid[0], mid[0], out=out[:, 1]).addcmul_(mid[1], mid[1]).mul_(0.25)
    return out


# --------------------------------------------------------------------------- reference


def _reference_logmel(x: torch.Tensor, sample_rate: int, pad_mode: str) -> torch.Tensor:
    if sample_rate < 2 * _REF_FMAX:
        raise ValueError(
            f"frontend='reference' needs sample_rate >= {int(2 * _REF_FMAX)} (mel bins up to "
            f"{_REF_FMAX:.0f} Hz), got {sample_rate}"
        )
    n = x.shape[-1]
    pad = _REF_N_FFT // 2
    x = _pad_signal(x, pad, pad_mode)                                  # [B, 2, N + 512]
    n_frames = 1 + n // _REF_HOP
    window = torch.hann_window(_REF_N_FFT, periodic=True, dtype=x.dtype, device=x.device)
    mel = _reference_banded(sample_rate).to(x.dtype, x.device)
    out = _mel_power(x, n_frames, _REF_N_FFT, _REF_HOP, _REF_N_FFT, mel,
                     lambda frames, buffer: torch.mul(frames, window, out=buffer))
    return _power_to_db(out)


def _power_to_db(mel: torch.Tensor) -> torch.Tensor:
    """librosa ``power_to_db(S, ref=1, amin=1e-10, top_db=80)`` per clip and channel, in place.

    The 80 dB floor is applied on the power scale (``max(S, amin, max(S) * 1e-8)``), which
    is the same as flooring the dB values at ``max_dB - 80`` and saves a pass; the natural
    log is much faster than ``log10`` on CPU.
    """
    peak = mel.amax(dim=(-2, -1), keepdim=True)            # REF: per channel (wav2fbank)
    floor = peak.mul_(10.0 ** (-_REF_TOP_DB / 10.0)).clamp_min_(_REF_AMIN)
    return mel.clamp_min_(floor).log_().mul_(10.0 / math.log(10.0))


def _pad_signal(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Centre padding as librosa does it; reflect follows numpy for any signal length.

    ``F.pad(mode="reflect")`` needs ``pad < N``; numpy (and so librosa) reflects repeatedly,
    which matters for clips shorter than 256 samples.
    """
    if mode == "constant":
        padded = _scratch("padded", (*x.shape[:-1], x.shape[-1] + 2 * pad), x.dtype, x.device)
        padded[..., :pad] = 0                      # zero only the edges, not the whole buffer
        padded[..., -pad:] = 0
        padded[..., pad:-pad] = x
        return padded
    n = x.shape[-1]
    index = torch.arange(-pad, n + pad, device=x.device)
    if n == 1:
        index = torch.zeros_like(index)
    else:
        period = 2 * (n - 1)
        index = index.remainder(period)
        index = torch.where(index < n, index, period - index)
    return x.index_select(-1, index)


def reference_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular mel filters ``[n_mels, n_fft // 2 + 1]``.

    The filterbank librosa's ``filters.mel(htk=False, norm="slaney")`` defines: band edges
    equally spaced on the Slaney mel scale (linear below 1 kHz, logarithmic above), each
    triangle scaled by ``2 / (upper_edge_hz - lower_edge_hz)`` so every band has the same
    area. Computed in float64, returned as float32 like librosa's default.
    """
    edges_mel = torch.linspace(_hz_to_slaney_mel(f_min), _hz_to_slaney_mel(f_max), n_mels + 2,
                               dtype=torch.float64)
    edges_hz = _slaney_mel_to_hz(edges_mel)                             # [n_mels + 2]
    fft_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    triangles = torch.minimum(rising, falling).clamp_min(0.0)
    return (triangles * (2.0 / (upper - lower))).to(torch.float32)


@lru_cache(maxsize=8)
def _reference_banded(sample_rate: int) -> _BandedFilterbank:
    return _BandedFilterbank(reference_mel_filterbank(sample_rate, _REF_N_FFT, N_MELS, 0.0, _REF_FMAX))


_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL            # 15
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: float) -> float:
    if hz < _SLANEY_BREAK_HZ:
        return hz / _SLANEY_HZ_PER_MEL
    return _SLANEY_BREAK_MEL + math.log(hz / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP


def _slaney_mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_BREAK_MEL))
    return torch.where(mel >= _SLANEY_BREAK_MEL, log, linear)


# --------------------------------------------------------------------------- kaldi


def _kaldi_sizes(sample_rate: int) -> tuple[int, int, int]:
    size = int(sample_rate * _KALDI_FRAME_MS / 1000.0)
    shift = int(sample_rate * _KALDI_SHIFT_MS / 1000.0)
    n_fft = 1 << (size - 1).bit_length()                               # round_to_power_of_two
    return size, shift, n_fft


def _kaldi_logmel(x: torch.Tensor, sample_rate: int) -> torch.Tensor:
    size, shift, n_fft = _kaldi_sizes(sample_rate)
    if x.shape[-1] < size:
        x = F.pad(x, (0, size - x.shape[-1]))
    n = x.shape[-1]
    n_frames = 1 + (n - size) // shift                                 # snip_edges=True
    window = _kaldi_window(size, x.dtype, x.device)
    mel = _kaldi_mel_banks(sample_rate, n_fft).to(x.dtype, x.device)
    # Kaldi per frame: subtract the frame mean m, then pre-emphasis y[j] = a[j] - 0.97 a[j-1]
    # with a[-1] := a[0], then the window. Pre-emphasis is done once on the signal
    # (z[s] = x[s] - 0.97 x[s-1]); since it maps a constant c to 0.03 c, frame values
    # j >= 1 are z - 0.03 m, and j = 0 is 0.03 (x[start] - m).
    both = _scratch("signal", (x.shape[0], 2, 2, n), x.dtype, x.device)  # [B, 2, raw/emph, N]
    both[:, :, 0] = x
    torch.add(x[..., 1:], x[..., :-1], alpha=-_KALDI_PREEMPHASIS, out=both[:, :, 1, 1:])
    both[:, :, 1, :1] = x[..., :1]                # placeholder: every frame's j = 0 value is set below
    residual = 1.0 - _KALDI_PREEMPHASIS

    def prepare(frames: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        raw, emph = frames[:, :, 0], frames[:, :, 1]                    # via the stacked signal
        mean = raw.mean(dim=-1, keepdim=True)
        torch.sub(emph, residual * mean, out=buffer)
        buffer[..., :1] = residual * (raw[..., :1] - mean)
        return buffer.mul_(window)

    out = _mel_power(both, n_frames, size, shift, n_fft, mel, prepare)
    # floor = float32 eps whatever the dtype, as torchaudio's kaldi.fbank does
    return out.clamp_min_(torch.finfo(torch.float32).eps).log_()


def _kaldi_window(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Kaldi's Hamming window is symmetric: 0.54 - 0.46 cos(2 pi n / (size - 1))
    return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=dtype, device=device)


@lru_cache(maxsize=8)
def _kaldi_mel_banks(sample_rate: int, n_fft: int) -> _BandedFilterbank:
    banks, _ = kaldi.get_mel_banks(N_MELS, n_fft, float(sample_rate), _KALDI_LOW_HZ, 0.0,
                                   100.0, -500.0, 1.0)                 # [n_mels, n_fft // 2]
    # Kaldi's banks stop below Nyquist: the last FFT bin gets weight 0
    return _BandedFilterbank(F.pad(banks, (0, 1)))
