"""Per-rank memory of ``train.strategy=fsdp`` vs ``ddp`` on 2 CPU ranks (gloo), ViT-B/32, every tower trained.

Each strategy runs in its own ``torchrun --nproc_per_node=2``: the real pre-training ``Stepper``
(``model.train_clip: true``), random inputs, ``--steps`` optimiser steps of ``--batch`` samples per
rank. Every rank reports the bytes of parameters, gradients and AdamW moments it holds (a shard's
local bytes under FSDP) and its peak RSS (``VmHWM``, the CPU's stand-in for GPU memory: activations,
the gathered blocks and allocator slack included), then rank 0 prints one table.

    PYTHONPATH=. python benchmarks/fsdp_memory.py [--batch 1 --frames 2 --segments 2 --steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from step_batch import random_pretrain_batch  # noqa: E402


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """One rank: build, step, report (runs under torchrun)."""
    from clip4vla.config import PretrainConfig, load_config
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.train.distributed import init_distributed
    from clip4vla.train.loop import Stepper
    from clip4vla.train.pretrain import PretrainTask

    torch.set_num_threads(1)
    dist = init_distributed(device="cpu")
    b, f, s = args.batch, args.frames, args.segments
    config = load_config(PretrainConfig, None, [
        f"train.strategy={args.strategy}", f"train.batch_size={b * dist.world_size}", f"data.max_frames={f}",
        f"audio.max_segments={s}", "optim.lr=1e-6", "model.train_clip=true",
    ])
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.vit_b_32(), audio_init="vision", use_type_token=True)
    task = PretrainTask(config, dist)
    task.setup(model)
    stepper = Stepper(config, task, model, dist, total_steps=100)
    batch = random_pretrain_batch(b, f, s, seed=dist.rank)
    for _ in range(args.steps):
        stepper.train_step([batch])
    params = [p for group in stepper.optimizer.param_groups for p in group["params"]]
    moments = sum(_local_bytes(v) for state in stepper.optimizer.state.values() for v in state.values()
                  if isinstance(v, torch.Tensor) and v.dim() > 0)
    row = {"strategy": args.strategy, "rank": dist.rank, "weights_gib": sum(_local_bytes(p) for p in params) / 2**30,
           "grads_gib": sum(_local_bytes(p.grad) for p in params if p.grad is not None) / 2**30,
           "moments_gib": moments / 2**30, "peak_rss_gib": _peak_rss_gib()}
    rows = [None] * dist.world_size
    torch.distributed.all_gather_object(rows, row)
    if dist.is_main:
        print(json.dumps(rows))
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="samples per rank")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--strategy", default=None, help=argparse.SUPPRESS)  # set in the torchrun workers
    args = parser.parse_args()
    if args.strategy is not None:
        worker(args)
        return
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"ViT-B/32 CLIP4VLA, every tower trained, fp32, 2 ranks (gloo), batch {args.batch}/rank, "
          f"{args.frames} frames, {args.segments} segments, {args.steps} steps")
    print("| strategy | rank | weights GiB | grads GiB | AdamW moments GiB | peak RSS GiB |")
    print("|---|---|---:|---:|---:|---:|")
    for strategy in ("ddp", "fsdp"):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               __file__, "--strategy", strategy, "--batch", str(args.batch), "--frames", str(args.frames),
                               "--segments", str(args.segments), "--steps", str(args.steps)],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{strategy} failed:\n{done.stderr[-3000:]}")
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            print(f"| {row['strategy']} | {row['rank']} | {row['weights_gib']:.2f} | {row['grads_gib']:.2f} | "
                  f"{row['moments_gib']:.2f} | {row['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()
