"""Throughput of the tokenizer, the CLIP image transform and the retrieval metrics.

    PYTHONPATH=. python benchmarks/bench_preprocessing.py   (or after `pip install -e .`)

Prints one line per measurement (best of a few repeats, wall clock, current torch threads).
"""

from __future__ import annotations

import random
import time

import torch
from PIL import Image

from clip4vla.evaluation.retrieval import retrieval_metrics, video_to_text_metrics
from clip4vla.text import Tokenizer, tokenize
from clip4vla.video.transform import clip_transform


def best_of(fn, repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rng = random.Random(0)
    words = "a man woman dog cat is playing cooking driving the on in with guitar kitchen car street ball".split()
    captions = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) for _ in range(2000)]

    tok = Tokenizer()
    t = best_of(lambda: tokenize(captions, context_length=32, tokenizer=Tokenizer()), repeats=2)
    print(f"tokenize 2000 captions, fresh tokenizer (incl. merges load): {t * 1e3:.0f} ms")
    tokenize(captions, context_length=32, tokenizer=tok)
    t = best_of(lambda: tokenize(captions, context_length=32, tokenizer=tok))
    print(f"tokenize 2000 captions, warm BPE cache: {t * 1e3:.0f} ms ({2000 / t:.0f} captions/s)")

    frames = torch.randint(0, 256, (12, 3, 360, 640), dtype=torch.uint8)
    t = best_of(lambda: clip_transform(frames))
    print(f"clip_transform uint8 [12,3,360,640] -> [12,3,224,224]: {t * 1e3:.1f} ms")
    hd = torch.randint(0, 256, (12, 3, 720, 1280), dtype=torch.uint8)
    t = best_of(lambda: clip_transform(hd))
    print(f"clip_transform uint8 [12,3,720,1280] -> [12,3,224,224]: {t * 1e3:.1f} ms")
    pils = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    t = best_of(lambda: clip_transform(pils))
    print(f"clip_transform 12 PIL images 640x360 (Pillow route): {t * 1e3:.1f} ms")

    g = torch.Generator().manual_seed(0)
    sim = torch.randn(1000, 1000, generator=g)
    t = best_of(lambda: (retrieval_metrics(sim), video_to_text_metrics(sim)))
    print(f"retrieval metrics t2v+v2t 1000x1000 (MSR-VTT 1k-A size): {t * 1e3:.1f} ms")
    sim = torch.randn(15000, 1500, generator=g)  # VATEX test: 1500 videos x 10 captions
    mapping = torch.arange(1500).repeat_interleave(10)
    t = best_of(lambda: (retrieval_metrics(sim, mapping), video_to_text_metrics(sim, mapping)), repeats=3)
    print(f"retrieval metrics t2v+v2t 15000x1500 multi-caption (VATEX size): {t * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
