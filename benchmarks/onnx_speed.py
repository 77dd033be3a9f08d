"""ONNX encoders (onnxruntime, CPU) vs torch eager: embeddings per second at ViT-B/32 size.

Builds a CLIP4VLA of ViT-B/32 shape with random weights, exports it with
``clip4vla.models.onnx_export.export_onnx`` and times each encoder on one batch, fp32, in
onnxruntime (CPUExecutionProvider, default threads) and in torch eager (``torch.inference_mode``).
Batches follow the defaults of ``Preprocessing`` (the paper's settings): text ``embed.TEXT_BATCH``
texts of ``max_words`` tokens, video clips of ``max_frames`` frames, audio clips of
``max_segments`` segments, every frame and segment real (no padding). "emb/s" counts texts or
clips, "items/s" texts, frames or segments. Also prints the largest difference between the two
backends' unit embeddings.

    python benchmarks/onnx_speed.py [--arch vit_b_32] [--clips 4] [--iters 5] [--warmup 2] [--folder DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from clip4vla.embed import TEXT_BATCH
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.onnx_export import export_onnx
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.text import tokenize


def median_seconds(run: Callable[[], object], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="video and audio clips per batch")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per encoder and backend (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--arch", default="vit_b_32", help="CLIPConfig.named architecture (micro: a smoke test)")
    parser.add_argument("--folder", type=Path, default=None, help="where the .onnx files go (default: a temp dir)")
    args = parser.parse_args()

    torch.manual_seed(0)
    pre = Preprocessing()
    model = CLIP4VLA.from_config(CLIPConfig.named(args.arch)).eval()
    model.preprocessing = pre
    folder = args.folder or Path(tempfile.mkdtemp(prefix="clip4vla-onnx-"))
    start = time.perf_counter()
    paths = export_onnx(model, folder)
    export_s = time.perf_counter() - start

    b = args.clips
    texts = [f"a person plays the guitar number {i} on a quiet street" for i in range(TEXT_BATCH)]
    tokens = tokenize(texts, context_length=pre.max_words, truncate=True)
    side = model.clip.config.image_resolution
    frames = torch.randn(b, pre.max_frames, 3, side, side)
    frame_mask = torch.ones(b, pre.max_frames, dtype=torch.bool)
    segments = torch.randn(b, pre.max_segments, 3, 224, 224)
    segment_mask = torch.ones(b, pre.max_segments, dtype=torch.bool)
    audio_type = torch.arange(b) % 2
    cases = {  # name: (embeddings per batch, encoder inputs per batch, label, torch call, onnx feed)
        "text": (TEXT_BATCH, TEXT_BATCH, f"{TEXT_BATCH} x {pre.max_words} tokens",
                 lambda: F.normalize(model.encode_text(tokens), dim=-1), {"tokens": tokens}),
        "video": (b, b * pre.max_frames, f"{b} x {pre.max_frames} frames",
                  lambda: model.encode_video(frames, frame_mask)[1], {"frames": frames, "frame_mask": frame_mask}),
        "audio": (b, b * pre.max_segments, f"{b} x {pre.max_segments} segments",
                  lambda: model.encode_audio(segments, segment_mask, audio_type)[1],
                  {"segments": segments, "segment_mask": segment_mask, "audio_type": audio_type}),
    }
    print(f"CLIP4VLA of shape {args.arch}, random weights; export of the three files {export_s:.0f} s "
          f"({', '.join(f'{p.name} {p.stat().st_size / 2**20:.0f} MiB' for p in paths.values())})")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__} "
          f"(CPUExecutionProvider, default threads); median of {args.iters} after {args.warmup} warm-up runs")
    print("| encoder | batch | torch eager s | onnxruntime s | torch emb/s | onnxruntime emb/s "
          "| torch items/s | onnxruntime items/s | ort / torch | max abs diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (n, items, label, torch_run, feed) in cases.items():
        session = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"])
        arrays = {k: v.numpy() for k, v in feed.items()}
        with torch.inference_mode():
            torch_s = median_seconds(torch_run, args.warmup, args.iters)
            expected = torch_run().numpy()
        ort_s = median_seconds(lambda: session.run(None, arrays), args.warmup, args.iters)
        diff = float(np.abs(session.run(None, arrays)[0] - expected).max())
        print(f"| {name} | {label} | {torch_s:.3f} | {ort_s:.3f} | {n / torch_s:.2f} | {n / ort_s:.2f} | "
              f"{items / torch_s:.1f} | {items / ort_s:.1f} | {torch_s / ort_s:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
