"""Annotation reader throughput: HowTo100M span growth and the full reader, and the mixture order.

Run: python benchmarks/bench_readers.py [--videos 5000] [--spans 100]
Prints seconds and spans/s. Synthetic transcripts with HowTo-like statistics (spans ~4 s, ~8 words).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from clip4vla.data.readers import read_howto100m
from clip4vla.data.sampler import MixtureOrder
from clip4vla.data.readers.howto100m import extend_spans


def synthetic_captions(videos: int, spans: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    words = ["add", "the", "salt", "now", "and", "stir", "it", "well", "then", "wait"]
    data = {}
    for v in range(videos):
        durations = rng.exponential(4.0, spans)
        starts = np.cumsum(durations) - durations
        counts = rng.poisson(8, spans)
        data[f"vid{v:07d}"] = {
            "start": np.round(starts, 2).tolist(),
            "end": np.round(starts + durations, 2).tolist(),
            "text": [" ".join(rng.choice(words, c)) for c in counts],
        }
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=5000)
    parser.add_argument("--spans", type=int, default=100)
    args = parser.parse_args()

    n = 2_000_000
    rng = np.random.default_rng(1)
    durations = rng.exponential(4.0, n)
    starts = np.cumsum(durations) - durations
    video = np.arange(n) // 100
    first, last = video * 100, np.minimum(video * 100 + 99, n - 1)
    t0 = time.perf_counter()
    lo, hi = extend_spans(starts, starts + durations, rng.poisson(8, n), first, last, 10.0, 5)
    dt = time.perf_counter() - t0
    print(
        f"extend_spans: {n} spans in {dt:.2f} s ({n / dt / 1e6:.2f} M spans/s), "
        f"mean window {np.mean(hi - lo + 1):.2f} spans"
    )

    data = synthetic_captions(args.videos, args.spans)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "caption.json"
        path.write_text(json.dumps(data))
        t0 = time.perf_counter()
        records = read_howto100m(path)
        dt = time.perf_counter() - t0
    print(
        f"read_howto100m: {len(records)} records from {args.videos} videos in {dt:.2f} s "
        f"({len(records) / dt / 1e3:.0f} k records/s, JSON parse included)"
    )

    sampler = MixtureOrder([1_000_000, 2_000_000], weights=[0.5, 0.5], num_samples=1_000_000, seed=0)
    t0 = time.perf_counter()
    order = sampler.epoch_indices(3)
    dt = time.perf_counter() - t0
    print(f"MixtureOrder.epoch_indices: {len(order)} indices over 3 M records in {dt:.2f} s")


if __name__ == "__main__":
    main()
