#!/usr/bin/env python
"""Write the built-in synthetic tri-modal dataset, in MSR-VTT layout or as any corpus's format twin.

    python scripts/make_synthetic.py --out data/synthetic_300 --num-clips 300 --seed 0
    python scripts/make_synthetic.py --format vatex --out twins/vatex --num-clips 40
    python scripts/make_synthetic.py --format esc50 --out twins/esc50 --source data/synthetic
    python scripts/make_synthetic.py --format manifest --out data/manifest --source data/synthetic

Without --format: the clips (H.264/AAC .mp4) and MSR-VTT annotations are written to --out
(~62 kB per clip). Idempotent: returns at once if --out already holds the same clips; a folder
holding a dataset of another size or seed is replaced only with --overwrite.

With --format: the clips are laid out like that real corpus (its annotation files and media
names: HowTo100M, AudioSet, MSR-VTT, VATEX, AudioCaps, ESC-50, UCF101), so its config runs on
them with only its paths changed; --format manifest lays them out as your own data would be
(manifest.csv over media/, read by data.corpus: manifest). The clips come from --source, an existing synthetic dataset
(e.g. the quick start's data/synthetic), which is only read, never written; without --source they
(--num-clips, --seed) are generated first in <out>/synthetic. --prepared also writes the prepared
media (1-fps frames, 16 kHz wav) to <out>/prepared.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clip4vla.data.synthetic import make_synthetic_dataset  # noqa: E402
from clip4vla.data.synthetic_formats import FORMATS, write_corpus_format  # noqa: E402
from clip4vla.cli import HelpFormatter, positive_int  # noqa: E402

DEFAULT_CLIPS, DEFAULT_SEED = 300, 0


def _existing_settings(folder: Path) -> dict | None:
    """``synthetic_meta.json`` of a finished dataset in ``folder`` (None if there is none)."""
    try:
        meta = json.loads((folder / "synthetic_meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: the dataset, or with --format the format twin")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="lay the clips out as this corpus; without it, the MSR-VTT layout")
    parser.add_argument("--source", type=Path, default=None,
                        help="with --format: an existing synthetic dataset to take the clips from (read only, "
                             "never written); without it, --num-clips clips are generated in <out>/synthetic")
    parser.add_argument("--prepared", action="store_true",
                        help="with --format: also write the prepared media (1-fps frames, 16 kHz wav) to <out>/prepared")
    parser.add_argument("--num-clips", type=positive_int, default=None,
                        help=f"number of clips to generate; without it, {DEFAULT_CLIPS} (with --source: the source's)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"every clip is a function of the seed; without it, {DEFAULT_SEED} (with --source: the source's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a synthetic dataset of another size or seed already in the folder written to")
    parser.add_argument("--workers", type=positive_int, default=2, help="parallel processes (1 = in this process)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.source is not None and args.format is None:
        parser.error("--source is only read with --format (it names the dataset a format twin is made from)")

    if args.source is not None:
        meta = _existing_settings(args.source)
        if meta is None:
            parser.error(f"--source {args.source}: not a finished synthetic dataset (no readable synthetic_meta.json); "
                         "make one with this script without --format, or leave --source out")
        asked = {"num_clips": args.num_clips, "seed": args.seed}
        different = {k: v for k, v in asked.items() if v is not None and v != meta.get(k)}
        if different:
            parser.error(f"--source {args.source} holds {meta.get('num_clips')} clips of seed {meta.get('seed')}, "
                         f"not {', '.join(f'{k}={v}' for k, v in different.items())}; the source is never changed: "
                         "leave --source out to generate those clips in <out>/synthetic")
        base = args.source
    else:
        num_clips = args.num_clips if args.num_clips is not None else DEFAULT_CLIPS
        seed = args.seed if args.seed is not None else DEFAULT_SEED
        base = args.out / "synthetic" if args.format else args.out
        meta = _existing_settings(base)
        if meta is not None and not args.overwrite and (meta.get("num_clips"), meta.get("seed")) != (num_clips, seed):
            parser.error(f"{base} holds another synthetic dataset ({meta.get('num_clips')} clips, seed {meta.get('seed')}); "
                         f"writing {num_clips} clips of seed {seed} would replace it: choose another --out, or pass "
                         "--overwrite")
        make_synthetic_dataset(base, num_clips=num_clips, seed=seed, workers=args.workers,
                               progress=not args.no_progress)  # returns at once if already there
    try:
        out = write_corpus_format(base, args.format, args.out, prepared=args.prepared, workers=args.workers) \
            if args.format else base
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
