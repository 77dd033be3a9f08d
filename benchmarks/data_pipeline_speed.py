#!/usr/bin/env python
"""Samples/s of the media pipeline: 1-fps decode + CLIP transform + audio front-end.

Per sample: up to 12 frames -> ``[12,3,224,224]``, and the audio -> kaldi log-mel -> up to 10
segments ``[10,3,224,224]`` (the pre-training settings), through a ``torch.utils.data.DataLoader``
with 0, 1 and 2 workers, from raw ``.mp4`` files and from the prepared form (JPEG frames + wav).
Tokenisation and model work are left out on purpose: this measures what the data side costs.

    python benchmarks/data_pipeline_speed.py                 # synthetic set in /tmp, 120 clips
    python benchmarks/data_pipeline_speed.py --data DIR --num-clips 300 --workers 0 1 2

The synthetic dataset and its prepared copy are created on first use (both steps are idempotent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip4vla.audio import NoAudioError, empty_segments, load_audio, log_mel, to_segments  # noqa: E402
from clip4vla.data.prepare import prepare_videos  # noqa: E402
from clip4vla.data.synthetic import make_synthetic_dataset  # noqa: E402
from clip4vla.video import load_prepared_frames, load_video_frames  # noqa: E402

MAX_FRAMES = 12
MAX_SEGMENTS = 10


class MediaOnly(torch.utils.data.Dataset):
    """Frames + audio segments of one clip, from raw videos or from prepared files."""

    def __init__(self, root: Path, video_ids: list[str], route: str) -> None:
        self.root, self.ids, self.route = root, video_ids, route

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        vid = self.ids[i]
        video = self.root / "videos" / f"{vid}.mp4"
        if self.route == "raw":
            frames, frame_mask = load_video_frames(video, max_frames=MAX_FRAMES)
            audio_path = video
        else:
            frames, frame_mask = load_prepared_frames(self.root / "prepared" / "frames" / vid, max_frames=MAX_FRAMES)
            audio_path = self.root / "prepared" / "audio" / f"{vid}.wav"
        try:
            spec = log_mel(load_audio(audio_path), frontend="kaldi")
            segments, audio_mask = to_segments(spec, max_segments=MAX_SEGMENTS)
        except NoAudioError:
            segments, audio_mask = empty_segments(MAX_SEGMENTS)
        return {"frames": frames, "frame_mask": frame_mask, "audio": segments, "audio_mask": audio_mask}


def run(dataset: MediaOnly, workers: int, batch_size: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    n = 0
    t0 = time.perf_counter()
    for batch in loader:  # worker start-up is part of the cost of an epoch
        n += batch["frames"].shape[0]
    return n / (time.perf_counter() - t0)


def stage_costs(root: Path, ids: list[str]) -> dict[str, float]:
    """Median CPU milliseconds per clip of each stage, single-threaded (insensitive to machine load)."""
    from clip4vla.video import choose_seconds, clip_transform, read_one_fps
    from clip4vla.video.decode import _read_image, list_prepared_seconds

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs: dict[str, list[float]] = {}

    def timed(name, fn):
        t = time.process_time()
        out = fn()
        costs.setdefault(name, []).append(1000 * (time.process_time() - t))
        return out

    for vid in ids:
        video = root / "videos" / f"{vid}.mp4"
        _, rgb, _ = timed("decode 1-fps frames (mp4)", lambda: read_one_fps(video, choose=lambda a: choose_seconds(a, MAX_FRAMES)))
        files = list_prepared_seconds(root / "prepared" / "frames" / vid)
        timed("read prepared JPEG frames", lambda: [_read_image(files[s]) for s in choose_seconds(sorted(files), MAX_FRAMES)])
        timed("CLIP transform (batched)", lambda: clip_transform(torch.from_numpy(rgb).permute(0, 3, 1, 2)))
        try:
            timed("load_audio (mp4, AAC)", lambda: load_audio(video))
            wave = timed("load_audio (prepared wav)", lambda: load_audio(root / "prepared" / "audio" / f"{vid}.wav"))
        except NoAudioError:
            continue
        spec = timed("log_mel kaldi", lambda: log_mel(wave, frontend="kaldi"))
        timed("to_segments (max 10)", lambda: to_segments(spec, max_segments=MAX_SEGMENTS))
    torch.set_num_threads(torch_threads)
    return {name: float(torch.tensor(v).median()) for name, v in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/clip4vla_bench_synthetic"))
    parser.add_argument("--num-clips", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="best of N epochs per setting (interleaved)")
    args = parser.parse_args()

    t = time.perf_counter()
    make_synthetic_dataset(args.data, num_clips=args.num_clips, seed=args.seed, workers=2, progress=False)
    t_make = time.perf_counter() - t
    t = time.perf_counter()
    prepare_videos(args.data / "videos", args.data / "prepared", workers=2, progress=False)
    t_prep = time.perf_counter() - t
    ids = [f"video{i}" for i in range(args.num_clips)]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"synthetic set ({args.num_clips} clips): make {t_make:.1f} s (0 if it existed), prepare {t_prep:.1f} s")

    print("\nper-clip CPU cost, 1 thread, median over clips:")
    for name, ms in stage_costs(args.data, ids[:40]).items():
        print(f"  {name:28s} {ms:6.1f} ms")

    # Interleave the settings across repeats so a burst of load on the shared machine does not
    # land on one setting only; keep the best epoch of each.
    best: dict[tuple[str, int], float] = {}
    datasets = {route: MediaOnly(args.data, ids, route) for route in ("raw", "prepared")}
    for _ in range(args.repeats):
        for route, dataset in datasets.items():
            for workers in args.workers:
                rate = run(dataset, workers, args.batch_size)
                best[route, workers] = max(best.get((route, workers), 0.0), rate)
    print(f"\nDataLoader throughput (batch {args.batch_size}, best of {args.repeats}, load average now "
          f"{os.getloadavg()[0]:.1f}):")
    for (route, workers), rate in best.items():
        print(f"  {route:9s} workers={workers}: {rate:6.1f} samples/s")
    print(json.dumps([{"route": r, "workers": w, "samples_per_s": round(v, 1)} for (r, w), v in best.items()]))


if __name__ == "__main__":
    main()
