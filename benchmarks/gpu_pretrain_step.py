"""Pre-training steps on a GPU: samples/s and peak memory per configuration (``benchmarks/gpu_check.sh``).

One step = ``clip4vla.train.loop.Stepper.train_step``, the code training runs (as
``benchmarks/pretrain_step.py`` times it on the CPU), with the config's ``train.strategy`` and any
other ``--set`` override; random weights and inputs, every mask full. Launch under torchrun (one
process per GPU):

    torchrun --standalone --nproc_per_node=1 benchmarks/gpu_pretrain_step.py --backbone ViT-B-32 \
        --batch 16 --runs bf16,fp16,bf16:fsdp,bf16:compile [--steps 5 --warmup 2] [--json-out rows.jsonl]

A run is ``precision[:fsdp][:compile][:ckpt]``: ``fsdp`` sets ``train.strategy=fsdp`` (else ddp),
``compile`` sets ``train.compile=true`` (a config without that key reports the run as n/a), ``ckpt``
``model.grad_checkpointing=true``. Each run builds a fresh model and Stepper in this process; peak
memory is ``torch.cuda.max_memory_allocated`` over the build and all steps (model states +
activations, without the CUDA context), next to ``clip4vla.train.memory_plan``'s estimate of the
same quantity. ``--device cpu --backbone tiny`` runs the same code on the CPU (a dry run).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_batch import random_pretrain_batch  # noqa: E402


def parse_run(run: str) -> dict:
    precision, *flags = run.split(":")
    unknown = [f for f in flags if f not in ("fsdp", "compile", "ckpt")]
    if precision not in ("fp32", "bf16", "fp16") or unknown:
        raise ValueError(f"bad run {run!r}: precision[:fsdp][:compile][:ckpt]")
    return {"name": run, "precision": precision, "strategy": "fsdp" if "fsdp" in flags else "ddp",
            "compile": "compile" in flags, "ckpt": "ckpt" in flags}


def clip_config(backbone: str):
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.train.memory_plan import backbone_config

    return CLIPConfig.tiny() if backbone == "tiny" else backbone_config(backbone)


def make_batch(b: int, frames: int, segments: int, side: int) -> dict:
    return random_pretrain_batch(b, frames, segments, side)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled_graphs() -> int:
    """Graphs dynamo compiled so far in this process (0: nothing was compiled)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a diagnostic only
        return -1


def one_run(args, run: dict, dist) -> dict:
    from clip4vla.config import ConfigError, PretrainConfig, load_config
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.train.loop import Stepper
    from clip4vla.train.pretrain import PretrainTask

    row = {"backbone": args.backbone, **run, "batch": args.batch, "ranks": dist.world_size,
           "device": str(dist.device), "train_clip": args.train_clip}
    overrides = [
        f"train.precision={run['precision']}", f"train.batch_size={args.batch * dist.world_size}",
        f"data.max_frames={args.frames}", f"audio.max_segments={args.segments}", "optim.lr=1e-7",
        "pretrain.intra_modal=true", f"train.strategy={run['strategy']}",
        f"model.train_clip={str(args.train_clip).lower()}", f"model.grad_checkpointing={str(run['ckpt']).lower()}",
    ]
    if run["compile"]:
        overrides.append("train.compile=true")
    try:
        config = load_config(PretrainConfig, None, overrides)
    except ConfigError as err:
        return {**row, "status": f"n/a: {err}"}
    device = dist.device
    if run["precision"] == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return {**row, "status": "skipped: this GPU has no bf16 (V100: use fp16)"}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cfg = clip_config(args.backbone)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = CLIP4VLA.from_config(cfg, audio_init="vision", use_type_token=True)
    model.freeze_clip(not args.train_clip)
    model.set_grad_checkpointing(run["ckpt"])
    task = PretrainTask(config, dist)
    task.setup(model)
    stepper = Stepper(config, task, model, dist, total_steps=1000)
    graphs_before = compiled_graphs()
    row["sharded"] = bool(getattr(stepper, "sharding", None))
    row["build_s"] = time.perf_counter() - t0
    batch = make_batch(args.batch, args.frames, args.segments, cfg.image_resolution)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t = time.perf_counter()
        metrics = stepper.train_step([batch])
        sync(device)
        times.append(time.perf_counter() - t)
    timed = sorted(times[args.warmup:])
    median = timed[len(timed) // 2]
    row.update(status="ok", first_step_s=times[0], step_s=median, samples_per_s=args.batch * dist.world_size / median,
               loss=metrics["loss"], compiled=compiled_graphs() - graphs_before if graphs_before >= 0 else None)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.backbone != "tiny":
        from clip4vla.train import memory_plan as mp

        measurements = mp.load_measurements(ROOT / "benchmarks" / "activation_memory.json")
        p = mp.plan(args.backbone, "H100-80GB", measurements, strategy=run["strategy"], ranks=dist.world_size,
                    batch=args.batch, precision=run["precision"], checkpointing=run["ckpt"],
                    train_clip=args.train_clip)
        row["estimate_gib"] = p.total - p.overhead  # what max_memory_allocated sees (no CUDA context)
    del stepper, task, model, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-32", help="ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336 or tiny")
    parser.add_argument("--batch", type=int, default=16, help="per-rank batch")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--runs", default="bf16,fp16", help="comma-separated precision[:fsdp][:compile][:ckpt]")
    parser.add_argument("--frozen-clip", dest="train_clip", action="store_false",
                        help="model.train_clip=false (default: every tower trains, what FSDP is for)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--json-out", type=Path, help="append one JSON line per run")
    args = parser.parse_args()
    runs = [parse_run(r) for r in args.runs.split(",") if r]
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
                 "use --device cpu --backbone tiny for a dry run")

    from clip4vla.train.distributed import init_distributed

    dist = init_distributed(device=args.device)
    for run in runs:
        try:
            row = one_run(args, run, dist)
        except Exception as err:  # noqa: BLE001 - one failed run is a row of the table, not the end
            row = {"backbone": args.backbone, **run, "batch": args.batch, "status": f"failed: {type(err).__name__}: "
                   f"{str(err).splitlines()[0][:300] if str(err) else ''}"}
            if args.device == "cuda":
                torch.cuda.empty_cache()
        if dist.is_main:
            print("ROW " + json.dumps(row), flush=True)
            if args.json_out:
                with args.json_out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
