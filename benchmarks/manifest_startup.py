"""A million-row manifest (``data.corpus: manifest``): start-up time and peak memory per rank.

Writes a CSV of ``--rows`` rows over empty media files (the reader checks names and existence, it
never decodes): ``--captions`` rows per file, every ``--window-every``-th file cut into two
windows (HowTo100M-style), ``--sound-every``-th file a ``.wav``, a hash split (no split column).
Then, in a fresh process so the peak RSS (``ru_maxrss``) is its own, does what every rank does
at start: reads the train split (one record per caption) and the val and test splits (one per
clip), runs the training media check of ``clip4vla.data.splits``, lists the training rows' clip
ids and captions (what the retrieval and caption trainers read at start) and builds 1000 random
records. ``--keep DIR`` keeps (and reuses) the 250k media files and the CSV.

    PYTHONPATH=. python benchmarks/manifest_startup.py --rows 1000000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMPORTS_PEAK_MIB = 0
WORDS = ("a", "dog", "runs", "on", "the", "beach", "while", "waves", "crash", "and", "someone", "laughs", "cat",
         "sleeps", "near", "window", "rain", "falls", "car", "passes", "by", "street", "music", "plays")


def write_manifest(folder: Path, rows: int, captions: int, window_every: int, sound_every: int) -> dict:
    start = time.perf_counter()
    files = rows // captions
    media = folder / "media"
    with open(folder / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video", "caption", "start", "end"])
        for i in range(files):
            sub = media / f"d{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True, exist_ok=True)
            name = f"f{i:07d}.{'wav' if i % sound_every == 0 else 'mp4'}"
            (sub / name).touch()
            rel = f"media/{sub.name}/{name}"
            for k in range(captions):
                caption = " ".join(WORDS[(i * 7 + k * 3 + j) % len(WORDS)] for j in range(6 + (i + k) % 8))
                window = ["", ""]
                if i % window_every == 0:
                    window = ["0", "30"] if k < captions // 2 else ["30", "60.5"]
                writer.writerow([rel, f"{caption}, take {k}", *window])
    return {"files": files, "rows": files * captions, "write_s": round(time.perf_counter() - start, 1),
            "csv_mib": round((folder / "manifest.csv").stat().st_size / 2**20, 1)}


def startup(path: str) -> dict:
    """One rank's start-up (runs in the child process)."""
    import numpy as np

    t0 = time.perf_counter()
    from clip4vla.config import RetrievalConfig, load_config
    from clip4vla.data.corpora import read_split
    from clip4vla.data.splits import _check_train_media

    t_import = time.perf_counter()
    global IMPORTS_PEAK_MIB
    IMPORTS_PEAK_MIB = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # torch & co.
    config = load_config(RetrievalConfig, None, ["data.corpus=manifest", f"data.manifest.path={path}"])
    train = read_split(config.data, "manifest", "train", "retrieval", unfold_captions=True)
    t_read = time.perf_counter()
    val = read_split(config.data, "manifest", "val", "retrieval")
    test = read_split(config.data, "manifest", "test", "retrieval")
    _check_train_media(train, "data.corpus=manifest")
    t_check = time.perf_counter()
    numbers = {vid: i for i, vid in enumerate(dict.fromkeys(train.video_ids()))}  # the retrieval trainer's
    captions = train.all_captions()  # the caption trainer's baselines
    t_trainer = time.perf_counter()
    picks = np.random.default_rng(0).integers(len(train), size=1000)
    records = [train[int(i)] for i in picks]
    t_records = time.perf_counter()
    arrays = sum(a.nbytes for a in train.table.arrays.values())
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = lambda key: round(int(status[key].split()[0]) / 1024) if key in status else None  # noqa: E731
    return {
        "train_rows": len(train), "val_clips": len(val), "test_clips": len(test),
        "import_s": round(t_import - t0, 2), "read_s": round(t_read - t_import, 2),
        "other_splits_and_media_check_s": round(t_check - t_read, 2),
        "startup_s": round(t_check - t0, 2), "trainer_ids_and_captions_s": round(t_trainer - t_check, 2),
        "train_clips": len(numbers), "us_per_record": round((t_records - t_trainer) / len(records) * 1e6, 1),
        "table_mib": round(arrays / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_anon_mib_after": kib("RssAnon"), "rss_file_mib_after": kib("RssFile"),
        "imports_peak_rss_mib": IMPORTS_PEAK_MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--captions", type=int, default=4, help="rows per media file")
    parser.add_argument("--window-every", type=int, default=4)
    parser.add_argument("--sound-every", type=int, default=5)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the manifest and media here and keep them (reused when already there)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(startup(args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="manifest-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        made = {"rows": args.rows}
        if not (folder / "manifest.csv").is_file():
            made = write_manifest(folder, args.rows, args.captions, args.window_every, args.sound_every)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, __file__, "--child", str(folder / "manifest.csv")],
                              capture_output=True, text=True, env=env, check=True)
        print(json.dumps({**made, **json.loads(done.stdout.strip().splitlines()[-1])}))


if __name__ == "__main__":
    main()
