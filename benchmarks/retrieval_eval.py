"""Retrieval evaluation at scale: streamed (chunked) metrics against the full score matrix.

Random unit feature sets (G2G: a score is a dot product) of N texts x N videos, one caption per
video. Each measurement runs in its own process so its peak RSS (VmHWM) is its own:

* ``streamed``: ``streamed_retrieval_metrics`` over chunks of rows (the evaluation code path);
* ``full``: the naive path, the whole ``[N, N]`` matrix then ``retrieval_metrics`` +
  ``video_to_text_metrics`` (skipped where the matrix would not fit: 40 GB at 100k in fp32).

    PYTHONPATH=. python benchmarks/retrieval_eval.py [--sizes 10000,100000] [--dim 512]
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


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def features(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    videos = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(videos + 0.9 * torch.randn(n, dim, generator=g), dim=-1)  # noisy matches
    return texts, videos


def child(mode: str, n: int, dim: int) -> None:
    from clip4vla.evaluation.retrieval import retrieval_metrics, streamed_retrieval_metrics, video_to_text_metrics

    texts, videos = features(n, dim)
    before = peak_rss_gib()
    start = time.perf_counter()
    if mode == "streamed":
        t2v, v2t = streamed_retrieval_metrics(lambda rows: texts[rows] @ videos.T, n, n)
    else:
        sim = texts @ videos.T
        t2v, v2t = retrieval_metrics(sim), video_to_text_metrics(sim)
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"mode": mode, "n": n, "seconds": seconds, "peak_rss_gib": peak_rss_gib(),
                                  "features_rss_gib": before, "t2v_R1": t2v["R1"], "v2t_R1": v2t["R1"]}))


def run(mode: str, n: int, dim: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--n", str(n), "--dim", str(dim)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} at {n} failed: {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--full-limit-gib", type=float, default=8.0, help="skip the full matrix above this size")
    parser.add_argument("--child", default=None)
    parser.add_argument("--n", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.n, args.dim)
    print(f"torch {torch.__version__}, {args.threads} threads, feature dim {args.dim}, one caption per video")
    print("| N x N | path | seconds | ns per score | peak RSS GiB (features alone) | t2v R@1 | v2t R@1 |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        modes = ["streamed"] + (["full"] if n * n * 4 / 1024**3 <= args.full_limit_gib else [])
        for mode in modes:
            r = run(mode, n, args.dim, args.threads)
            print(f"| {n} x {n} | {mode} | {r['seconds']:.2f} | {1e9 * r['seconds'] / n / n:.2f} | "
                  f"{r['peak_rss_gib']:.2f} ({r['features_rss_gib']:.2f}) | {r['t2v_R1']:.2f} | {r['v2t_R1']:.2f} |",
                  flush=True)
        if "full" not in modes:
            print(f"| {n} x {n} | full | - | - | needs {n * n * 4 / 1024**3:.0f} GB for the matrix alone: not run | | |")


if __name__ == "__main__":
    main()
