#!/usr/bin/env python
r"""What fits where: peak GPU memory per rank of a pre-training step and the largest batch that fits.

    python scripts/plan_memory.py --backbone ViT-L-14-336 --gpu V100-16GB [--strategy ddp|fsdp --ranks 8
        --batch 16 --precision fp32|bf16|fp16 --checkpointing --train-clip|--frozen-clip]
    python scripts/plan_memory.py --table [--table-out /tmp/plan_memory_table.md]
    python scripts/plan_memory.py --measure [--backbones ViT-B-32,...]   # re-measure activations (minutes)
    python scripts/plan_memory.py --show-measurements                   # the cached measurements

An estimate, not yet confirmed on a GPU. Method (clip4vla/train/memory_plan.py says it in full):
parameters counted exactly from the model built on the meta device; fp32 weights (4 B) for every
tower, fp32 gradients (4 B) and AdamW moments (8 B) for the trained ones (bf16/fp16 autocast keeps
fp32 masters); DDP adds its gradient buckets (~ one gradient copy); FSDP divides the states of the
trained towers' blocks by the ranks (embeddings, norms, projections and frozen towers stay whole)
and adds the largest block's unsharded parameters + gradients twice (prefetch);
activations per sample (12 frames, 10 audio segments + their masked copy, a 32-token caption)
measured on the CPU as the bytes autograd saves for backward (benchmarks/activation_memory.json,
re-made by --measure); a fixed 1 GiB per rank for the CUDA context and workspaces and 5 % of the
card for allocator fragmentation (both assumptions).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.train import memory_plan as mp  # noqa: E402

MEASUREMENTS = REPO / "benchmarks" / "activation_memory.json"
TABLE_GPUS = tuple(mp.GPUS)
TABLE_BACKBONES = {"ViT-B-32": "B/32", "ViT-B-16": "B/16", "ViT-L-14": "L/14", "ViT-L-14-336": "L/14@336"}
LABEL = "estimate (not yet confirmed on a GPU)"


def table_precision(gpu: str) -> str:
    return "fp16" if gpu.startswith("V100") else "bf16"  # V100 has no bf16


def table_markdown(measurements: dict, ranks: int = 8) -> str:
    """Largest per-rank batch: backbones x GPUs x (DDP, FSDP) x (no checkpointing, checkpointing)."""
    head = "| backbone | strategy | " + " | ".join(f"{g} ({table_precision(g)})" for g in TABLE_GPUS) + " |"
    lines = [head, "|" + "---|" * (2 + len(TABLE_GPUS))]
    for backbone, short in TABLE_BACKBONES.items():
        for strategy in mp.STRATEGIES:
            cells = []
            for gpu in TABLE_GPUS:
                n = [mp.largest_batch(backbone, gpu, measurements, strategy=strategy, ranks=ranks,
                                      precision=table_precision(gpu), checkpointing=ck, train_clip=True)
                     for ck in (False, True)]
                cells.append(f"{n[0]} / {n[1]}")
            name = "DDP" if strategy == "ddp" else f"FSDP ({ranks} ranks)"
            lines.append(f"| {short} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_text(measurements: dict, ranks: int = 8) -> str:
    return (
        f"Largest per-rank batch without / with activation checkpointing, an {LABEL}: pre-training with "
        "model.train_clip=true (all three towers trained), AdamW, 12 frames + 10 audio segments (and their "
        f"masked copy) + 32 words per sample, bf16 autocast (fp16 on V100), {ranks} ranks; "
        "`python scripts/plan_memory.py --table`.\n\n" + table_markdown(measurements, ranks) + "\n"
    )


def measurements_markdown(measurements: dict) -> str:
    """The cached measurements per backbone and precision: MiB saved per item and per sample."""
    items = {"text": mp.SAMPLE["captions"], "vision": mp.SAMPLE["frames"], "audio": mp.SAMPLE["audio_segments"]}
    lines = ["| backbone | precision | caption / frame / audio segment MiB | per sample MiB, all trained (checkpointing) "
             "| per sample MiB, audio only (checkpointing) | per step MiB (autocast weight copies) |",
             "|---|---|---|---|---|---|"]
    mib = 2**20
    for backbone in mp.BACKBONES:
        for precision, acts in measurements["backbones"].get(backbone, {}).items():
            per = {k: sum(acts[t][f"{k}_per_item"] * items[t] for t in items) / mib for k in ("full", "ckpt")}
            audio = {k: acts["audio"][f"{k}_per_item"] * items["audio"] / mib for k in ("full", "ckpt")}
            step = sum(acts[t]["full_per_step"] for t in items) / mib
            lines.append(f"| {backbone} | {precision} | " + " / ".join(f"{acts[t]['full_per_item'] / mib:.1f}" for t in items)
                         + f" | {per['full']:.0f} ({per['ckpt']:.0f}) | {audio['full']:.0f} ({audio['ckpt']:.0f}) | {step:.0f} |")
    return "\n".join(lines)


def measure(backbones: list[str], out: Path, command: str) -> None:
    import platform

    import torch

    record = {
        "command": command,
        "what": "bytes autograd saves for backward per item (a frame, an audio segment, a caption) and per step, per "
                "tower, measured on the CPU with saved_tensors_hooks (storages counted once, parameters and inputs "
                "left out); 'block_per_item' is one transformer block's share; fp16 has the sizes of bf16",
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "sample": mp.SAMPLE,
        "parameters": {},
        "backbones": {},
        "step_check": [],
    }
    if out.exists():  # keep the backbones not re-measured
        old = json.loads(out.read_text())
        record["parameters"], record["backbones"] = old.get("parameters", {}), old.get("backbones", {})
        record["step_check"] = old.get("step_check", [])
    for name in mp.BACKBONES:
        record["parameters"][name] = mp.parameters_record(name)
    for name in backbones:
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            record["backbones"].setdefault(name, {})[precision] = mp.measure_activations(name, precision)
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            out.write_text(json.dumps(record, indent=1) + "\n")  # what is measured so far
    if "ViT-B-32" in backbones:  # the per-tower composition against one whole step's towers
        record["step_check"] = []
        for precision in ("fp32", "bf16"):
            acts = record["backbones"]["ViT-B-32"][precision]
            for batch in (1, 2):
                for ckpt in (False, True):
                    measured = mp.measure_step("ViT-B-32", precision, batch, ckpt)
                    key = "ckpt" if ckpt else "full"
                    composed = sum(acts[t][f"{key}_per_item"] * k * batch + acts[t][f"{key}_per_step"]
                                   for t, k in (("text", 1), ("vision", mp.SAMPLE["frames"]),
                                                ("audio", mp.SAMPLE["audio_segments"])))
                    row = {"backbone": "ViT-B-32", "precision": precision, "batch": batch, "checkpointing": ckpt,
                           "step_bytes": measured, "composed_bytes": composed}
                    record["step_check"].append(row)
                    print(f"  step check {row}", flush=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-B-32", help=f"one of {', '.join(mp.BACKBONES)}")
    parser.add_argument("--gpu", default="A100-80GB", help=f"one of {', '.join(mp.GPUS)}")
    parser.add_argument("--strategy", default="ddp", choices=mp.STRATEGIES)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="per-rank batch of the breakdown")
    parser.add_argument("--precision", default=None, choices=mp.PRECISIONS,
                        help="default bf16 (fp16 on V100, which has no bf16)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (model.grad_checkpointing)")
    clip = parser.add_mutually_exclusive_group()
    clip.add_argument("--train-clip", dest="train_clip", action="store_true", default=True,
                      help="train the text and vision towers too (default)")
    clip.add_argument("--frozen-clip", dest="train_clip", action="store_false",
                      help="model.train_clip=false: only the audio encoder trains (the paper)")
    parser.add_argument("--table", action="store_true", help="print the README table (and write --table-out)")
    parser.add_argument("--table-out", type=Path, default=Path("/tmp/plan_memory_table.md"))
    parser.add_argument("--show-measurements", action="store_true", help="print the cached activation measurements")
    parser.add_argument("--measure", action="store_true", help="re-measure the activations on this CPU (minutes)")
    parser.add_argument("--backbones", default=",".join(mp.BACKBONES), help="with --measure: which")
    parser.add_argument("--measurements", type=Path, default=MEASUREMENTS)
    args = parser.parse_args(argv)

    if args.measure:
        names = [b for b in args.backbones.split(",") if b]
        for name in names:
            try:
                mp.backbone_config(name)
            except ValueError as err:
                parser.error(str(err))
        measure(names, args.measurements, "python scripts/plan_memory.py " + " ".join(sys.argv[1:] if argv is None else argv))
        return 0
    if not args.measurements.exists():
        parser.error(f"{args.measurements} is missing: run with --measure first")
    measurements = mp.load_measurements(args.measurements)
    if args.show_measurements:
        print(f"{args.measurements} (made by: {measurements.get('command')})")
        print(measurements_markdown(measurements))
        return 0
    if args.table:
        text = table_text(measurements, args.ranks)
        print(text)
        args.table_out.write_text(text)
        print(f"(markdown written to {args.table_out})")
        return 0

    precision = args.precision or table_precision(args.gpu)
    options = dict(strategy=args.strategy, ranks=args.ranks, precision=precision,
                   checkpointing=args.checkpointing, train_clip=args.train_clip)
    try:
        p = mp.plan(args.backbone, args.gpu, measurements, batch=args.batch, **options)
        best = mp.largest_batch(args.backbone, args.gpu, measurements, **options)
    except ValueError as err:
        parser.error(str(err))
    counts = p.params
    trained = "all towers" if args.train_clip else "audio encoder only (text + vision frozen)"
    print(f"{args.backbone} on {args.gpu} ({mp._gpu_total_gib(args.gpu):.1f} GiB, {p.usable:.1f} usable after a "
          f"{100 * mp.FRAGMENTATION_MARGIN:.0f} % margin), {args.strategy.upper()} x {args.ranks} ranks, {precision}, "
          f"checkpointing {'on' if args.checkpointing else 'off'}, trained: {trained}")
    print(f"parameters: text {counts.text / 1e6:.1f} M, vision {counts.vision / 1e6:.1f} M, audio "
          f"{counts.audio / 1e6:.1f} M, total {counts.total / 1e6:.1f} M ({counts.trained(args.train_clip) / 1e6:.1f} M trained)")
    print("method: exact parameter counts; fp32 weights + fp32 grads + AdamW fp32 moments (trained only); "
          "DDP buckets / FSDP shards; activations per sample measured on the CPU (saved-for-backward bytes, "
          f"{args.measurements.name}); {mp.CUDA_OVERHEAD_GIB:g} GiB CUDA overhead and a "
          f"{100 * mp.FRAGMENTATION_MARGIN:.0f} % margin assumed")
    print(f"peak memory per rank at batch {args.batch}, {LABEL}:")
    print(mp.describe(p))
    print(f"largest per-rank batch that fits: {best} ({LABEL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
