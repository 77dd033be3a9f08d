"""``clip4vla-search``: indexing throughput, query latency at 10k / 100k videos, and whether it finds
what it is asked for on a freshly generated synthetic set.

    PYTHONPATH=. python benchmarks/search_speed.py --model runs/pretrain_synthetic/model

1. **Colour queries**: a new synthetic set (another seed than the quick start's) is indexed with the
   quick start's model; for every colour, the query "a <colour> shape" counts how many of the top 5
   files are that colour (vision, audio, both) next to what random ranking gives (5 x the colour's
   share). In the synthetic world the colour also chooses the event sound, so audio can answer too.
2. **Indexing throughput** (videos/s, CPU) with that tiny model and with a ViT-B/32-sized model
   (random weights: the speed does not depend on them).
3. **Query latency** (p50/p95 over 200 queries) over 10k and 100k indexed videos of random unit
   embeddings (D = 512, one window each, audio on 80 %), and the memory the loaded index takes.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from clip4vla import load_model
from clip4vla.data.synthetic import COLOURS, make_synthetic_dataset
from clip4vla.embed import embed_text
from clip4vla.search import build_index, load_index, rank


def colour_queries(model_path: Path, root: Path, index_path: Path) -> dict:
    meta = json.loads((root / "MSRVTT_data.json").read_text())["videos"]
    colour_of = {f"{v['video_id']}.mp4": v["attributes"]["colour"] for v in meta}
    start = time.perf_counter()
    stats = build_index(root / "videos", model_path, index_path, rebuild=True, audio_type="auto", progress=False)
    seconds = time.perf_counter() - start
    index = load_index(index_path)
    model = load_model(model_path)
    rows = {}
    for colour in COLOURS:
        query = embed_text(model, [f"a {colour} shape"])[0]
        share = sum(c == colour for c in colour_of.values()) / len(colour_of)
        row = {"chance": round(5 * share, 2)}
        for modality in ("v", "a", "av"):
            top = rank(index, query, 5, modality)
            row[modality] = sum(colour_of[Path(r["path"]).name] == colour for r in top)
        rows[colour] = row
    return {"files": stats["files"], "index_seconds": round(seconds, 1),
            "videos_per_s": round(stats["embedded"] / seconds, 2), "rows": rows}


def vit_b32_throughput(root: Path, n_videos: int, tmp: Path) -> dict:
    from clip4vla.models.checkpoints import export_model
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.vit_b_32())
    path = export_model(model, tmp / "vit_b32", Preprocessing(max_frames=12, max_segments=3), task="pretrain")
    folder = tmp / "vit_videos"
    folder.mkdir()
    for video in sorted((root / "videos").glob("*.mp4"))[:n_videos]:
        shutil.copy(video, folder / video.name)
    start = time.perf_counter()
    stats = build_index(folder, path, tmp / "vit_index.pt", rebuild=True, audio_type="nb", progress=False)
    seconds = time.perf_counter() - start
    return {"videos": stats["embedded"], "seconds": round(seconds, 1), "videos_per_s": round(stats["embedded"] / seconds, 3),
            "frames": 12, "segments": 3}


def random_index(n: int, dim: int = 512, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    unit = lambda: torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)  # noqa: E731
    has_audio = torch.rand(n, generator=g) < 0.8
    return {"paths": [f"video{i:06d}.mp4" for i in range(n)], "root": "/videos", "first": torch.arange(n),
            "count": torch.ones(n, dtype=torch.long), "video": unit(), "audio": unit() * has_audio[:, None],
            "has_video": torch.ones(n, dtype=torch.bool), "has_audio": has_audio,
            "spans": torch.tensor([[0.0, 10.0]], dtype=torch.float64).expand(n, 2).clone()}


def query_latency(n: int, queries: int = 200) -> dict:
    index = random_index(n)
    tmp = Path(tempfile.mkdtemp())
    torch.save(index, tmp / "index.pt")
    start = time.perf_counter()
    torch.load(tmp / "index.pt", weights_only=True)
    load_s = time.perf_counter() - start
    size = (tmp / "index.pt").stat().st_size
    shutil.rmtree(tmp)
    tensor_bytes = sum(v.numel() * v.element_size() for v in index.values() if isinstance(v, torch.Tensor))
    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(queries):
        q = torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0)
        start = time.perf_counter()
        rank(index, q, 10, "av")
        times.append(time.perf_counter() - start)
    times.sort()
    return {"videos": n, "p50_ms": round(1000 * times[len(times) // 2], 2), "p95_ms": round(1000 * times[int(0.95 * len(times))], 2),
            "index_MiB": round(tensor_bytes / 2**20, 1), "file_MiB": round(size / 2**20, 1), "load_s": round(load_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/pretrain_synthetic/model"))
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--seed", type=int, default=11, help="another seed than the quick start's (0)")
    parser.add_argument("--vit-videos", type=int, default=20)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="search_bench_"))
    root = make_synthetic_dataset(tmp / "synthetic", num_clips=args.clips, seed=args.seed, progress=False)
    result = {"colour": colour_queries(args.model, root, tmp / "index.pt")}
    print("query 'a <colour> shape': how many of the top 5 have that colour (chance = 5 x share)")
    print(f"  {'colour':8} {'v':>3} {'a':>3} {'av':>3} {'chance':>7}")
    for colour, row in result["colour"]["rows"].items():
        print(f"  {colour:8} {row['v']:>3} {row['a']:>3} {row['av']:>3} {row['chance']:>7.2f}")
    totals = {m: sum(r[m] for r in result["colour"]["rows"].values()) for m in ("v", "a", "av", "chance")}
    print(f"  {'total':8} {totals['v']:>3} {totals['a']:>3} {totals['av']:>3} {totals['chance']:>7.2f}  (of 30)")
    print(f"indexing, tiny model: {result['colour']['videos_per_s']} videos/s ({result['colour']['files']} files, "
          f"{result['colour']['index_seconds']} s)")
    result["vit_b32"] = vit_b32_throughput(root, args.vit_videos, tmp)
    print(f"indexing, ViT-B/32 size (12 frames, 3 segments): {result['vit_b32']['videos_per_s']} videos/s")
    result["latency"] = [query_latency(int(n)) for n in args.sizes.split(",")]
    for row in result["latency"]:
        print(f"query over {row['videos']} videos: p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms; index "
              f"{row['index_MiB']} MiB in memory, {row['file_MiB']} MiB on disk, loads in {row['load_s']} s")
    result["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    shutil.rmtree(tmp)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
