"""Fine-tuning step at ViT-B/32 size on CPU (retrieval or captioning): samples/s and peak RSS.

One step = ``clip4vla.train.loop.Stepper.train_step`` with the task of
``configs/finetune_msrvtt.yaml`` (retrieval: every tower trains, G2L fusion, 12 frames, 16 audio
segments, 32-token captions, symmetric InfoNCE) or ``configs/caption_msrvtt.yaml`` (captioning:
teacher forcing through the caption generator, cross-entropy over the 49408-word vocabulary),
random weights and inputs, fp32. Each run is a fresh process, so the peak RSS (VmHWM) is its own.

    PYTHONPATH=. python benchmarks/finetune_step.py [--task retrieval|caption --batch 8 --steps 2 --fusion g2l --ckpt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = 32


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def child(args) -> None:
    from clip4vla.config import CaptionConfig, RetrievalConfig, load_config
    from clip4vla.data.dataset import caption_pair
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.train.caption import CaptionTask
    from clip4vla.train.distributed import init_distributed
    from clip4vla.train.loop import Stepper
    from clip4vla.train.retrieval import RetrievalTask

    common = [f"train.batch_size={args.batch}", "train.precision=fp32", f"model.grad_checkpointing={str(args.ckpt).lower()}"]
    if args.task == "retrieval":
        config = load_config(RetrievalConfig, ROOT / "configs" / "finetune_msrvtt.yaml",
                             common + [f"retrieval.fusion={args.fusion}"])
        task_cls = RetrievalTask
    else:
        config = load_config(CaptionConfig, ROOT / "configs" / "caption_msrvtt.yaml", common)
        task_cls = CaptionTask
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.vit_b_32())
    model.set_grad_checkpointing(args.ckpt)
    task = task_cls(config, init_distributed(device="cpu"))
    task.setup(model)
    stepper = Stepper(config, task, model, task.dist, total_steps=1000)
    b, f, seg = args.batch, config.data.max_frames, config.audio.max_segments
    g = torch.Generator().manual_seed(1)
    text = torch.zeros(b, WORDS, dtype=torch.long)
    text[:, :20] = torch.randint(1, 49406, (b, 20), generator=g)
    text[:, 0], text[:, 19] = 49406, 49407
    pairs = [caption_pair("a man is cooking pasta in a kitchen while music plays", WORDS) for _ in range(b)]
    batch = {
        "text": text, "frames": torch.randn(b, f, 3, 224, 224, generator=g), "frame_mask": torch.ones(b, f, dtype=torch.bool),
        "audio": torch.randn(b, seg, 3, 224, 224, generator=g), "audio_mask": torch.ones(b, seg, dtype=torch.bool),
        "audio_type": torch.ones(b, dtype=torch.long), "valid": torch.ones(b, dtype=torch.bool),
        "video_id": [f"v{i}" for i in range(b)],
        "caption_input": torch.stack([p[0] for p in pairs]), "caption_target": torch.stack([p[1] for p in pairs]),
    }
    if args.task == "retrieval":
        task.video_numbers = {v: i for i, v in enumerate(batch["video_id"])}
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        stepper.train_step([batch])
        times.append(time.perf_counter() - start)
        print(f"  step {i}: {times[-1]:.1f} s", file=sys.stderr, flush=True)
    timed = times[args.warmup:]
    print("RESULT " + json.dumps({"seconds": sum(timed) / len(timed), "peak_rss_gib": peak_rss_gib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("retrieval", "caption"), default="retrieval")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--fusion", default="g2l", choices=("g2g", "g2l", "l2l"))
    parser.add_argument("--ckpt", action="store_true", help="activation checkpointing (the config's default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    cmd = [sys.executable, __file__, "--child", "--task", args.task, "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--fusion", args.fusion] + (["--ckpt"] if args.ckpt else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    what = args.fusion.upper() if args.task == "retrieval" else "caption generator"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ViT-B/32 {args.task}, {what}, batch "
          f"{args.batch} (12 frames + 16 segments + 32 tokens each), fp32, checkpointing {'on' if args.ckpt else 'off'}")
    print(f"{result['seconds']:.1f} s/step, {args.batch / result['seconds']:.3f} samples/s, "
          f"peak RSS {result['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
