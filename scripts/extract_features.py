#!/usr/bin/env python
r"""Extract features of a folder (or a list) of videos and sounds into sharded files, resumably.

    python scripts/extract_features.py --model runs/pretrain_synthetic/model --media data/synthetic/videos \
        --out features/synthetic
    python scripts/extract_features.py --model MODEL --manifest files.txt --out features/mine --audio-type nb

Per file: the pooled video and audio embeddings, the per-window ones with their time spans, and
the per-frame and per-segment features (clip4vla.extract documents the shard format). Kill it at
any time and run the same command again: it continues where it stopped, never duplicating or
losing a row. Unreadable files are listed in <out>/skipped.jsonl with their reason; a path listed
twice in a manifest is extracted once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.cli import HelpFormatter, audio_type_arg, device_arg, exit_with_error, positive_int  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", type=Path, required=True,
                        help="the model to embed with (a training run's model folder, a Hub id or any model file)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--media", type=Path, help="a folder of videos / audio files (searched recursively)")
    source.add_argument("--manifest", type=Path,
                        help="a text file with one media path per line (the line is the item's id), or a .csv / "
                             ".tsv / .jsonl captions manifest (data.corpus: manifest; its video column's files)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    parser.add_argument("--shard-size", type=positive_int, default=1000, help="items per shard file")
    parser.add_argument("--audio-type", type=audio_type_arg, default="auto",
                        help="audio type token: auto (a speech detector picks vb or nb per file, as "
                             "clip4vla-search does; each row records the choice), vb, nb or a mixing ratio in [0, 1]")
    parser.add_argument("--device", type=device_arg, default="auto",
                        help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def read_manifest(path: Path) -> list[tuple[str, Path]]:
    """``(id, path)`` per non-empty line. Read as bytes: a line that is not valid UTF-8 is a file
    name like any other on Linux (kept as Python keeps such names), not a reason to stop."""
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl"):  # a captions manifest (data.corpus: manifest): its files
        from clip4vla.data.readers.manifest import read_manifest as read_captions_manifest

        try:
            return read_captions_manifest(path, split_fractions=(1, 0, 0)).media_files()
        except (ValueError, OSError) as err:
            exit_with_error(f"--manifest {err}")
    try:
        data = path.read_bytes()
    except OSError as err:
        exit_with_error(f"--manifest {path}: {err.strerror or err}")
    lines = [os.fsdecode(line.strip()) for line in data.splitlines() if line.strip()]
    return [(line, Path(line)) for line in lines]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    media = read_manifest(args.manifest) if args.manifest is not None else None

    from clip4vla.extract import extract_features, find_media, model_identity
    from clip4vla.cli import load_model_or_exit, resolve_device

    model = load_model_or_exit(args.model)
    model.to(resolve_device(args.device))
    if media is None:
        try:
            files = find_media(args.media)
        except FileNotFoundError as err:
            exit_with_error(err)
        media = [(str(p.relative_to(args.media)), p) for p in files]
    if not media:
        exit_with_error(f"no media files in {args.media or args.manifest}")
    try:
        counts = extract_features(model, media, args.out, model_identity(model, args.model), args.shard_size,
                                  args.audio_type, progress=not args.no_progress)
    except ValueError as err:
        exit_with_error(err)
    duplicates = f", {counts['duplicates']} duplicate(s) dropped" if counts["duplicates"] else ""
    print(f"{counts['extracted']} files extracted, {counts['skipped']} skipped (see {args.out / 'skipped.jsonl'}), "
          f"{counts['done_before']} done before{duplicates} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
