"""Samples/s per CPU core of the three media routes on the same clips: raw, prepared, shards.

The clips of a synthetic set are prepared (``prepare_videos``) and written as shards
(``write_shards``); then one process with one thread turns every record of the set into a
training sample (frames, audio segments with the masked copy, as pre-training does) through each
route, twice (the second pass shows the page cache warm, as in a long run). Files opened per
sample follow from the layouts: prepared = the frames chosen + one wav + one folder listing;
shards = one per shard per process, kept open.

    PYTHONPATH=. python benchmarks/shard_throughput.py --clips 300
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch

from clip4vla.config import DataConfig, SyntheticData
from clip4vla.data.corpora import read_split
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.data.prepare import prepare_videos
from clip4vla.data.shards import write_shards
from clip4vla.data.synthetic import make_synthetic_dataset
from clip4vla.models.preprocessing import Preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--root", type=Path, default=None, help="an existing synthetic set (default: generate one)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--segments", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="shard_bench_"))
    root = args.root or make_synthetic_dataset(tmp / "synthetic", num_clips=args.clips, progress=False)
    data = DataConfig(synthetic=SyntheticData(root=str(root), clips=args.clips))
    records = [r for split in ("train", "val", "test") for r in read_split(data, "synthetic", split, "pretrain")]
    start = time.perf_counter()
    prepare_videos(root / "videos", tmp / "prepared", workers=2, progress=False)
    prepared_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = write_shards(root / "videos", tmp / "shards_wav", shard_bytes=1 << 30, workers=2, progress=False)
    shards_s = time.perf_counter() - start
    write_shards(root / "videos", tmp / "shards", shard_bytes=1 << 30, workers=2, progress=False, audio_format="flac")
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20  # noqa: E731
    files = lambda p: sum(1 for f in p.rglob("*") if f.is_file())  # noqa: E731
    print(f"{len(records)} clips: prepared in {prepared_s:.0f} s ({files(tmp / 'prepared')} files, {size(tmp / 'prepared'):.0f} MiB); "
          f"shards in {shards_s:.0f} s ({summary.shards} shard(s), {size(tmp / 'shards_wav'):.0f} MiB with WAV audio, "
          f"{size(tmp / 'shards'):.0f} MiB with FLAC)")
    options = SampleOptions(inputs=Preprocessing(max_frames=args.frames, max_segments=args.segments), masked_audio=True)
    with_prepared = [dataclasses.replace(r, frames_dir=tmp / "prepared" / "frames" / r.video_id,
                                         audio_path=tmp / "prepared" / "audio" / f"{r.video_id}.wav") for r in records]
    routes = {
        "raw": TriModalDataset(records, options),
        "prepared": TriModalDataset(with_prepared, dataclasses.replace(options, media="prepared")),
        "shards": TriModalDataset(records, dataclasses.replace(options, media="shards",
                                                                   shards=(("synthetic", str(tmp / "shards_wav")),))),
        "shards-flac": TriModalDataset(records, dataclasses.replace(options, media="shards",
                                                                        shards=(("synthetic", str(tmp / "shards")),))),
    }
    print(f"one process, one thread, {args.frames} frames + {args.segments} segments (+ masked copy) per sample:")
    for name, dataset in routes.items():
        rates = []
        for _ in range(2):
            start = time.perf_counter()
            valid = sum(bool(dataset[i]["valid"]) for i in range(len(dataset)))
            rates.append(len(dataset) / (time.perf_counter() - start))
        print(f"  {name:9} {rates[0]:6.1f} samples/s (cold), {rates[1]:6.1f} (warm), {valid}/{len(dataset)} valid")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
