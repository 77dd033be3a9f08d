"""Audio encoder throughput at ViT-B/32 size: segments per second.

Times ``AudioEncoder.forward`` on a batch of 224x224 log-mel segments (all valid, one type token)
in float32 and under bf16 autocast, forward only (``torch.no_grad``) and forward + backward.

    python benchmarks/audio_encoder_speed.py [--segments 32] [--iters 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from clip4vla.models.audio import AudioEncoder
from clip4vla.models.clip import CLIPConfig


def time_run(encoder: AudioEncoder, segments: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype | None,
             backward: bool, iters: int) -> float:
    device = segments.device.type
    autocast = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        with contextlib.nullcontext() if backward else torch.no_grad(), autocast:
            _, global_ = encoder(segments, mask, "nb")
        if backward:
            global_.sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocator, kernels)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=32, help="segments per batch")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    encoder = AudioEncoder.scratch(CLIPConfig.vit_b_32()).to(args.device).train()
    params = sum(p.numel() for p in encoder.parameters())
    segments = torch.randn(1, args.segments, 3, 224, 224, device=args.device)
    mask = torch.ones(1, args.segments, dtype=torch.bool, device=args.device)
    print(f"ViT-B/32 audio encoder: {params:,} parameters; {args.segments} segments per batch; "
          f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'precision':<16} {'pass':<18} {'s/batch':>8} {'segments/s':>11}")
    for label, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        for backward in (False, True):
            seconds = time_run(encoder, segments, mask, dtype, backward, args.iters)
            kind = "forward+backward" if backward else "forward (no grad)"
            print(f"{label:<16} {kind:<18} {seconds:>8.2f} {args.segments / seconds:>11.1f}")


if __name__ == "__main__":
    main()
