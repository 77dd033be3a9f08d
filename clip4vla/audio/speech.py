"""A cheap speech detector: is a sound speech ([VB]) or another sound ([NB])?

It is what ``audio_type: auto`` means everywhere: ``clip4vla.embed_audio(..., audio_type="auto")``,
clip4vla-search, and manifest rows with ``audio_type`` ``auto`` (decided per clip from the sound
the model hears, in ``clip4vla.data.dataset``).
"""

from __future__ import annotations

import torch

__all__ = ["heard_audio_type", "looks_like_speech", "speech_features"]


def speech_features(waveform: torch.Tensor, sample_rate: int = 16000) -> tuple[float, float, float]:
    """``(voiced share of the loud frames, median pitch of the voiced frames in Hz, pitch spread)``.

    32-ms frames every 16 ms; a frame is voiced when its normalised autocorrelation peaks above 0.5
    at a lag of a 70-400 Hz pitch; the spread is the standard deviation of log pitch.
    """
    mono = waveform.float().mean(dim=0) if waveform.dim() == 2 else waveform.float()
    frame, hop = int(0.032 * sample_rate), int(0.016 * sample_rate)
    if mono.numel() < frame * 4:
        return 0.0, 0.0, 0.0
    frames = mono.unfold(0, frame, hop)  # [T, frame]
    frames = frames - frames.mean(dim=1, keepdim=True)
    energy = frames.pow(2).mean(dim=1)
    loud = energy > 0.05 * energy.max().clamp(min=1e-12)
    spectrum = torch.fft.rfft(frames * torch.hann_window(frame), n=2 * frame)
    autocorr = torch.fft.irfft(spectrum.abs().pow(2), n=2 * frame)[:, :frame]
    autocorr = autocorr / autocorr[:, :1].clamp(min=1e-12)
    lo, hi = sample_rate // 400, sample_rate // 70
    peak, lag = autocorr[:, lo:hi].max(dim=1)
    voiced = loud & (peak > 0.5)
    if int(voiced.sum()) < 3:
        return float(voiced.sum() / loud.sum().clamp(min=1)), 0.0, 0.0
    pitch = sample_rate / (lag[voiced] + lo).float()
    return float(voiced.sum() / loud.sum()), float(pitch.median()), float(pitch.log().std())


def looks_like_speech(waveform: torch.Tensor, sample_rate: int = 16000) -> bool:
    """A cheap guess whether a sound is speech ([VB]) rather than other sound ([NB]).

    Speech is voiced part of the time (unvoiced consonants and pauses between), at a pitch in the
    range of human voices, and that pitch moves (intonation, vibrato); steady tones, continuous
    sounds, noise and higher-pitched events fail one of the three. How well it separates what:
    ``benchmarks/speech_detector.py`` (numbers in benchmarks/RESULTS.md).
    """
    voiced, pitch, spread = speech_features(waveform, sample_rate)
    return VOICED[0] < voiced < VOICED[1] and PITCH_HZ[0] <= pitch <= PITCH_HZ[1] and spread > PITCH_SPREAD


VOICED, PITCH_HZ, PITCH_SPREAD = (0.3, 0.98), (75.0, 260.0), 0.05


def heard_audio_type(waveform: torch.Tensor | None) -> str:
    """``"vb"`` for a sound that looks like speech, else ``"nb"`` (no sound at all is not speech)."""
    return "vb" if waveform is not None and looks_like_speech(waveform) else "nb"
