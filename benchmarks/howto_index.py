"""HowTo100M annotations at corpus scale: start-up time and peak memory per rank, by representation.

A simulated ``caption.json`` of N spans (``--spans-per-video`` spans per video, 113 as in the real
corpus: 136 M spans / 1.2 M videos; each span 3-12 words, 1-8 s) is read four ways, each in a
fresh process so its peak RSS (``ru_maxrss``) is its own:

* ``records``: one ``ClipRecord`` per window, as the reader built before the span table (here:
  the in-memory table materialised with ``list(...)``; also pays for ``json.load``);
* ``in-memory table``: ``read_howto100m(caption.json)`` (``json.load`` + compact arrays);
* ``index build``: ``build_howto100m_index`` (``caption.json`` streamed, arrays saved), once;
* ``index start-up``: what every rank does at start: memory-map the index, the epoch order of the
  sampler, this rank's first 10k indices and 1000 random records.

    PYTHONPATH=. python benchmarks/howto_index.py --spans 1000000,4000000 --records-max 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORDS = ("cut", "the", "onion", "into", "small", "pieces", "now", "add", "salt", "and", "pepper", "to", "taste",
         "stir", "well", "for", "two", "minutes", "then", "put", "it", "in", "oven", "we", "will", "make", "a",
         "nice", "soup", "today", "with", "carrots", "tighten", "screw", "paint", "fence", "glue", "dry")


def write_captions(path: Path, n_spans: int, per_video: int, seed: int = 0) -> float:
    """Stream a caption.json of ``n_spans`` spans to ``path``; seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    with open(path, "w") as f:
        f.write("{")
        done, v = 0, 0
        while done < n_spans:
            n = min(per_video, n_spans - done)
            lengths = rng.uniform(1, 8, n)
            gaps = rng.uniform(0, 1, n)
            ends = np.cumsum(lengths + gaps)
            starts = ends - lengths
            texts = [" ".join(words[rng.integers(0, len(words), k)]) for k in rng.integers(3, 13, n)]
            entry = {"start": np.round(starts, 2).tolist(), "end": np.round(ends, 2).tolist(), "text": texts}
            f.write(("," if v else "") + json.dumps(f"vid{v:08d}") + ":" + json.dumps(entry))
            done += n
            v += 1
        f.write("}")
    return time.perf_counter() - start


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
mode, caption, index = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
from clip4vla.data.readers.howto100m import build_howto100m_index, read_howto100m
from clip4vla.data.sampler import MixtureOrder, ResumableShardedSampler
start = time.perf_counter()
out = {}
if mode == "records":
    records = list(read_howto100m(caption))
    out["windows"] = len(records)
elif mode == "table":
    table = read_howto100m(caption)
    out["windows"] = len(table)
elif mode == "build":
    out.update(build_howto100m_index(caption, index, progress=False))
elif mode == "startup":
    table = read_howto100m(index)
    sampler = ResumableShardedSampler(MixtureOrder([len(table)], seed=0), batch_size=32, rank=0, world_size=8)
    sampler.set_epoch(0)
    it = iter(sampler)
    first = [next(it) for _ in range(10000)]
    out["startup_s"] = round(time.perf_counter() - start, 2)
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(table), 1000):
        table[int(i)]
    out["record_us"] = round((time.perf_counter() - t) * 1e3, 1)  # ms per 1000 = us per record
    out["windows"] = len(table)
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    out["rss_anon_MiB"] = int(status["RssAnon"].split()[0]) // 1024
    out["rss_file_MiB"] = int(status["RssFile"].split()[0]) // 1024
out["seconds"] = round(time.perf_counter() - start, 2)
out["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print("RESULT " + json.dumps(out))
"""


def measure(mode: str, caption: Path, index: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(caption), str(index)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": proc.stderr[-500:]}
    return json.loads(lines[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", default="1000000,4000000")
    parser.add_argument("--spans-per-video", type=int, default=113)
    parser.add_argument("--records-max", type=int, default=1000000, help="largest N for the per-record modes")
    args = parser.parse_args()
    full = 136_000_000
    for n in (int(x) for x in args.spans.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            caption, index = Path(tmp) / "caption.json", Path(tmp) / "spans"
            wrote = write_captions(caption, n, args.spans_per_video)
            print(f"\n{n:,} spans ({n // args.spans_per_video:,} videos): caption.json {caption.stat().st_size / 2**20:.0f} MiB "
                  f"written in {wrote:.0f} s")
            modes = (["records", "table"] if n <= args.records_max else []) + ["build", "startup"]
            for mode in modes:
                r = measure(mode, caption, index)
                if "error" in r:
                    print(f"  {mode:10} failed: {r['error']}")
                    continue
                scale = full / n
                line = (f"  {mode:10} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_MiB']:7,} MiB"
                        f"  -> x{scale:.0f} at 136M: ~{r['seconds'] * scale / 60:.0f} min, ~{r['peak_rss_MiB'] * scale / 1024:.0f} GiB")
                if mode == "startup":
                    line = (f"  {mode:10} {r['startup_s']:7.1f} s  peak RSS {r['peak_rss_MiB']:7,} MiB (anonymous "
                            f"{r['rss_anon_MiB']:,}, file-backed {r['rss_file_MiB']:,}); {r['record_us']} us per random record")
                if mode == "build":  # built a group of videos at a time: the peak does not grow with N
                    size = sum(p.stat().st_size for p in index.iterdir()) / 2**20
                    line = (f"  {mode:10} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_MiB']:7,} MiB (bounded)  -> at 136M: "
                            f"~{r['seconds'] * scale / 60:.0f} min; index {size:.0f} MiB on disk, ~{size * scale / 1024:.0f} GiB")
                print(line, flush=True)


if __name__ == "__main__":
    main()
