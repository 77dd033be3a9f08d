"""Audio front-end throughput: ours (batched torch) vs a per-clip librosa implementation of REF.

Workload: ``--clips`` stereo clips of ``--seconds`` at 16 kHz (different content left and
right), waveform -> ``[L, 3, 224, 224]`` standardised segments.

* ``ours/reference``, ``ours/kaldi``: one ``log_mel`` call on the whole batch, then one
  ``to_segments`` call (the batched path).
* ``... 1-by-1``: the same, one call per clip (how a data-loader worker uses it). Output
  tensors of a 32-clip batch are > 100 MB each; fresh allocations that large are mmapped
  and page-faulted on every call, which the small per-clip tensors avoid.
* ``librosa/REF``: what the released code does per clip: ``power_to_db(melspectrogram(...))``
  for L, (L+R)/2 and R in float64 (``get_raw_audio`` returns float64), ``split_frame`` and
  ``audio_processor`` in numpy. Written here from that description; librosa is only needed
  for this benchmark.

Variants are timed in turns (round-robin) in one process, so a busy machine slows them
alike; the best of ``--repeats`` rounds is reported, as wall time and as process CPU time
(the CPU time is the steadier number on a shared machine; with ``--threads 1`` it is the
work done, with more threads it also counts threads waiting for each other). Usage::

    python benchmarks/audio_frontend_speed.py [--clips 32] [--seconds 10] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from clip4vla.audio import log_mel, to_segments

RATE = 16000


def make_clips(n_clips: int, seconds: float, seed: int = 0) -> np.ndarray:
    """``[B, N, 2]`` float32: tones, chirps and noise, different left and right."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    clips = np.empty((n_clips, t.size, 2), np.float32)
    for i in range(n_clips):
        f0, f1 = rng.uniform(100, 4000, size=2)
        left = 0.3 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
        right = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 6000) * t)
        clips[i, :, 0] = left + 0.05 * rng.standard_normal(t.size)
        clips[i, :, 1] = right + 0.05 * rng.standard_normal(t.size)
    return clips


def ours(waveforms: torch.Tensor, frontend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return to_segments(log_mel(waveforms, frontend=frontend))


def ours_per_clip(waveforms: torch.Tensor, frontend: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One call per clip, as a data-loader worker makes them."""
    return [to_segments(log_mel(clip, frontend=frontend)) for clip in waveforms]


def librosa_reference(clips: np.ndarray) -> list[np.ndarray]:
    import librosa

    def wav2fbank(channel: np.ndarray) -> np.ndarray:
        mel = librosa.feature.melspectrogram(y=channel, sr=RATE, n_fft=512, hop_length=128, n_mels=224, fmax=8000)
        return librosa.power_to_db(mel).T

    out = []
    for clip in clips:
        wav = clip.astype(np.float64)
        spec = np.stack([wav2fbank(wav[:, 0]), wav2fbank((wav[:, 0] + wav[:, 1]) / 2), wav2fbank(wav[:, 1])])
        pad = 224 - spec.shape[1] % 224            # REF pads even when T % 224 == 0
        spec = np.concatenate([spec, np.zeros((3, pad, 224))], axis=1)
        frames = spec.reshape(3, -1, 224, 224).transpose(1, 0, 2, 3)
        mean = frames.mean(axis=(2, 3), keepdims=True)
        std = frames.std(axis=(2, 3), keepdims=True) + 1e-10
        out.append((frames - mean) / std)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        try:   # numpy's BLAS too (librosa's mel projection is a BLAS product)
            from threadpoolctl import threadpool_limits
            threadpool_limits(limits=args.threads)
        except ImportError:
            print("threadpoolctl not installed: numpy's BLAS threads are not limited")
    warnings.filterwarnings("ignore", message="Empty filters")

    clips = make_clips(args.clips, args.seconds)
    waveforms = torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 2, 1)))   # [B, 2, N]
    variants = {
        "ours/reference": lambda: ours(waveforms, "reference"),
        "ours/kaldi": lambda: ours(waveforms, "kaldi"),
        "ours/reference 1-by-1": lambda: ours_per_clip(waveforms, "reference"),
        "ours/kaldi 1-by-1": lambda: ours_per_clip(waveforms, "kaldi"),
        "librosa/REF": lambda: librosa_reference(clips),
    }
    # agreement check before timing: same numbers as the per-clip librosa pipeline
    ours_segments, _ = variants["ours/reference"]()
    theirs = np.stack(librosa_reference(clips[:2]))[:, : ours_segments.shape[1]]
    max_diff = float(np.abs(ours_segments[:2].numpy() - theirs).max())

    for run in variants.values():   # warm-up (allocator, filterbank caches, librosa imports)
        run()
    best = {name: float("inf") for name in variants}         # wall clock
    best_cpu = {name: float("inf") for name in variants}     # process CPU time, all threads
    for _ in range(args.repeats):
        for name, run in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
            best_cpu[name] = min(best_cpu[name], time.process_time() - start_cpu)

    audio_seconds = args.clips * args.seconds
    print(f"{args.clips} stereo clips x {args.seconds:g} s at 16 kHz = {audio_seconds:g} s of audio; "
          f"torch threads {torch.get_num_threads()}; best of {args.repeats}")
    print(f"max |ours/reference - librosa/REF| on segments of 2 clips: {max_diff:.2e}")
    for name, seconds in best.items():
        print(f"  {name:22s} wall {seconds * 1000:8.1f} ms  {audio_seconds / seconds:7.0f} audio-s/s   "
              f"cpu {best_cpu[name] * 1000:8.1f} ms")
    for name in [n for n in variants if n.startswith("ours")]:
        print(f"speed-up {name} vs librosa/REF: wall {best['librosa/REF'] / best[name]:.1f}x, "
              f"cpu {best_cpu['librosa/REF'] / best_cpu[name]:.1f}x")


if __name__ == "__main__":
    main()
