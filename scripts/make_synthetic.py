#!/usr/bin/env python
"""Write the built-in synthetic tri-modal dataset, in MSR-VTT layout or as any corpus's format twin.

    python scripts/make_synthetic.py --out data/synthetic --num-clips 300 --seed 0
    python scripts/make_synthetic.py --format vatex --out data/vatex_twin --prepared

With ``--format`` the clips (generated in ``--source`` first, or reused from there) are laid out
like the real corpus (HowTo100M, AudioSet, MSR-VTT, VATEX, AudioCaps, ESC-50, UCF101 annotation
files and media names), so that corpus's config runs on them unchanged except for its paths;
``--prepared`` also writes the prepared media (1-fps frames, 16 kHz wav) to ``<out>/prepared``.
Idempotent: returns at once if the dataset already holds the same clips.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clip4vla.data.synthetic import make_synthetic_dataset  # noqa: E402
from clip4vla.data.synthetic_formats import FORMATS, write_corpus_format  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="lay the clips out as this corpus (default: the MSR-VTT layout in --out)")
    parser.add_argument("--source", type=Path, default=Path("data/synthetic"),
                        help="with --format: where the clips are generated (or reused) first")
    parser.add_argument("--prepared", action="store_true", help="with --format: also prepare the media")
    parser.add_argument("--num-clips", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (1 = in this process)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = args.source if args.format else args.out
    make_synthetic_dataset(base, num_clips=args.num_clips, seed=args.seed, workers=args.workers,
                           progress=not args.no_progress)
    out = write_corpus_format(base, args.format, args.out, prepared=args.prepared, workers=args.workers) \
        if args.format else base
    print(out)


if __name__ == "__main__":
    main()
