#!/usr/bin/env python
"""Extract features of a folder (or a list) of videos and sounds into sharded files, resumably.

    python scripts/extract_features.py --model runs/pretrain_synthetic/model.pt --media data/synthetic/videos \
        --out features/synthetic
    python scripts/extract_features.py --model MODEL --manifest files.txt --out features/mine --audio-type auto

Per file: the pooled video and audio embeddings, the per-window ones with their time spans, and
the per-frame and per-segment features (clip4vla.extract documents the shard format). Kill it at
any time and run the same command again: it continues where it stopped, never duplicating or
losing a row. Unreadable files are listed in <out>/skipped.jsonl with their reason.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--media", type=Path, help="a folder of videos / audio files (searched recursively)")
    source.add_argument("--manifest", type=Path, help="a text file with one media path per line")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--audio-type", default="nb", help="vb, nb, auto, or a mixing ratio in [0, 1]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.extract import extract_features, find_media, model_identity
    from clip4vla.train.cli import load_model_or_exit, resolve_device

    audio_type = args.audio_type
    if audio_type not in ("vb", "nb", "auto"):
        try:
            audio_type = float(audio_type)
        except ValueError:
            parser.error(f"--audio-type must be vb, nb, auto or a number in [0, 1], got {args.audio_type!r}")
    model = load_model_or_exit(args.model)
    device = resolve_device(args.device)
    model.to(device)
    if args.media is not None:
        try:
            files = find_media(args.media)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        media = [(str(p.relative_to(args.media)), p) for p in files]
    else:
        lines = [line.strip() for line in args.manifest.read_text().splitlines() if line.strip()]
        media = [(line, Path(line)) for line in lines]
    if not media:
        print(f"error: no media files in {args.media or args.manifest}", file=sys.stderr)
        return 2
    try:
        counts = extract_features(model, media, args.out, model_identity(model, args.model), args.shard_size,
                                  audio_type, progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{counts['extracted']} files extracted, {counts['skipped']} skipped (see {args.out / 'skipped.jsonl'}), "
          f"{counts['done_before']} done before -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
