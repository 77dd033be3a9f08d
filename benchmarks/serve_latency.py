"""``clip4vla-search serve``: query latency through HTTP at 10k and 100k indexed videos, and the
cost of a thumbnail.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/serve_latency.py --model runs/pretrain_synthetic/model

1. **Latency through HTTP.** For each size, a packed index of random unit embeddings of the model's
   width (one window per video, sound on 80 %: the shape ``clip4vla-search index`` writes; the
   latency does not depend on the values) is served by the real server (werkzeug, threaded, on a
   free 127.0.0.1 port) and asked ``--queries`` different texts through ``GET /api/search`` (text
   embedding + ranking + JSON, a new HTTP connection per request, as a browser's first request),
   then "more like this" (``GET /api/similar``: no text to embed). p50 / p95 in ms, plus the
   ranking alone in-process, and the time to load the index and model at start-up.
   ``--vit-b32`` repeats the 100k text queries with a ViT-B/32-sized model (random weights: the
   text tower is what costs).
2. **Thumbnails.** For ``--thumb-files`` videos of ``--media`` (the quick start's synthetic set):
   the poster frame (first request: decode + JPEG + write to the cache), the same thumbnail again
   (read from the cache), and a spectrogram of the sound track (what a sound file gets), ms per
   file and bytes per thumbnail.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import torch

from clip4vla import load_model
from clip4vla.extract import model_identity
from clip4vla.files import save_checkpoint
from clip4vla.search import DEFAULT_NAME, INDEX_FORMAT, INDEX_VERSION, rank

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "diamond")
SOUNDS = ("a high siren", "a low hum", "a dog barking", "rain", "a bell", "someone talking", "silence", "music")


def queries(n: int) -> list[str]:
    """``n`` different sentences (no two requests alike, so nothing could be served from a cache)."""
    texts = [f"a {size} {c} {s} with {snd}" for size in ("small", "large", "tiny", "big", "moving")
             for c in COLOURS for s in SHAPES for snd in SOUNDS]
    return texts[:n]


def synthetic_index(model_path: Path, folder: Path, n: int, seed: int = 0) -> Path:
    """A packed index of ``n`` videos (random unit rows), written as ``clip4vla-search index`` would."""
    model = load_model(model_path)
    dim = model.clip.config.embed_dim
    g = torch.Generator().manual_seed(seed)
    unit = lambda: torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)  # noqa: E731
    has_audio = torch.rand(n, generator=g) < 0.8
    st = model_path.stat()
    header = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "root": str(folder.resolve()),
              "model": {**model_identity(model, model_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    index = {**header, "paths": [f"video{i:06d}.mp4" for i in range(n)],
             "size": torch.full((n,), 1000, dtype=torch.long), "mtime_ns": torch.zeros(n, dtype=torch.long),
             "first": torch.arange(n), "count": torch.ones(n, dtype=torch.long),
             "video": unit(), "audio": unit() * has_audio[:, None], "has_video": torch.ones(n, dtype=torch.bool),
             "has_audio": has_audio, "spans": torch.tensor([[0.0, 10.0]], dtype=torch.float64).expand(n, 2).clone(),
             "skipped": {}}
    path = folder / DEFAULT_NAME
    save_checkpoint(path, index)
    return path


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)}


def http_latency(model_path: Path, n: int, n_queries: int, tmp: Path) -> dict:
    from werkzeug.serving import make_server

    from clip4vla.serve.app import create_app
    from clip4vla.serve.library import Library

    folder = tmp / f"videos_{n}"
    folder.mkdir()
    index_path = synthetic_index(model_path, folder, n)
    start = time.perf_counter()
    library = Library(folder, index_path)
    load_s = time.perf_counter() - start
    server = make_server("127.0.0.1", 0, create_app(library), threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(url: str) -> float:
        begin = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
        conn.request("GET", url)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        elapsed = time.perf_counter() - begin
        assert response.status == 200, body[:300]
        assert len(json.loads(body)["results"]) == 10
        return elapsed

    get("/api/search?q=warm+up&k=10")
    text = [get("/api/search?" + urllib.parse.urlencode({"q": q, "modality": "av", "k": 10})) for q in queries(n_queries)]
    more = [get(f"/api/similar?id={(7919 * i) % n}&window=0&modality=av&k=10") for i in range(n_queries)]
    ranking = []
    g = torch.Generator().manual_seed(1)
    for _ in range(n_queries):
        q = torch.nn.functional.normalize(torch.randn(library.index["video"].shape[1], generator=g), dim=0)
        begin = time.perf_counter()
        rank(library.index, q, 10, "av")
        ranking.append(time.perf_counter() - begin)
    server.shutdown()
    server.server_close()
    shutil.rmtree(folder)
    return {"videos": n, "dim": int(library.index["video"].shape[1]), "text": percentiles(text),
            "more_like_this": percentiles(more), "rank_only": percentiles(ranking), "startup_s": round(load_s, 2)}


def vit_b32_model(tmp: Path) -> Path:
    from clip4vla.models.checkpoints import export_model
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.vit_b_32())
    return export_model(model, tmp / "vit_b32", Preprocessing(max_frames=12, max_segments=3), task="pretrain")


def thumbnail_cost(media: Path, n_files: int, tmp: Path) -> dict:
    from clip4vla.embed import media_duration
    from clip4vla.media_errors import MediaError
    from clip4vla.serve.thumbnails import ThumbnailCache, spectrogram_jpeg

    files = sorted(media.glob("*.mp4"))[:n_files]
    if not files:
        raise SystemExit(f"error: no .mp4 files in {media}: run python scripts/pretrain.py (or make_synthetic.py) first")
    cache = ThumbnailCache(tmp / "thumbs")
    cold, warm, spectro, sizes, spectro_sizes = [], [], [], [], []
    for i, path in enumerate(files):
        end = media_duration(path)
        key = f"{path.name}\0{i}"
        begin = time.perf_counter()
        data = cache.get(path, key, 0.0, end, sound_only=False)
        cold.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        cache.get(path, key, 0.0, end, sound_only=False)
        warm.append(time.perf_counter() - begin)
        sizes.append(len(data))
        begin = time.perf_counter()
        try:
            picture = spectrogram_jpeg(path, 0.0, end)
        except MediaError:  # a silent clip: a sound file always has sound
            continue
        spectro.append(time.perf_counter() - begin)
        spectro_sizes.append(len(picture))
    mean_ms = lambda xs: round(1000 * statistics.fmean(xs), 2)  # noqa: E731
    return {"files": len(files), "spectrogram_files": len(spectro), "poster_first_ms": mean_ms(cold), "poster_cached_ms": mean_ms(warm),
            "spectrogram_ms": mean_ms(spectro), "poster_KB": round(statistics.fmean(sizes) / 1024, 1),
            "spectrogram_KB": round(statistics.fmean(spectro_sizes) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/pretrain_synthetic/model"))
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--media", type=Path, default=Path("data/synthetic/videos"))
    parser.add_argument("--thumb-files", type=int, default=50)
    parser.add_argument("--vit-b32", action="store_true", help="also 100k text queries with a ViT-B/32-sized model")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"error: no model at {args.model}: run python scripts/pretrain.py first")
    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    result = {"threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(f"through HTTP (new connection per request), {result['threads']} torch thread(s):", flush=True)
    try:
        result["thumbnails"] = t = thumbnail_cost(args.media, args.thumb_files, tmp)
        print(f"thumbnails ({t['files']} files): poster {t['poster_first_ms']} ms first time, {t['poster_cached_ms']} ms "
              f"cached, {t['poster_KB']} KB; spectrogram {t['spectrogram_ms']} ms, {t['spectrogram_KB']} KB "
              f"({t['spectrogram_files']} files with sound)", flush=True)
        result["latency"] = []
        runs = [(args.model, int(n), None) for n in args.sizes.split(",")]
        if args.vit_b32:
            runs.append((None, int(args.sizes.split(",")[-1]), "ViT-B/32 size"))
        for model_path, n, label in runs:
            row = http_latency(model_path or vit_b32_model(tmp), n, args.queries, tmp)
            row["model"] = label or f"{args.model.name}, D={row['dim']}"
            result["latency"].append(row)
            print(f"  {row['videos']:>7} videos ({row['model']}): text query p50 {row['text']['p50_ms']} ms, "
                  f"p95 {row['text']['p95_ms']} ms; more like this p50 {row['more_like_this']['p50_ms']} ms, "
                  f"p95 {row['more_like_this']['p95_ms']} ms; ranking alone p50 {row['rank_only']['p50_ms']} ms; "
                  f"start-up {row['startup_s']} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
