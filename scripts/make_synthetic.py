#!/usr/bin/env python
"""Write the built-in synthetic tri-modal dataset in MSR-VTT format.

    python scripts/make_synthetic.py --out data/synthetic --num-clips 300 --seed 0

Idempotent: returns at once if ``--out`` already holds the same dataset.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clip4vla.data.synthetic import make_synthetic_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--num-clips", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (1 = in this process)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = make_synthetic_dataset(args.out, num_clips=args.num_clips, seed=args.seed, workers=args.workers,
                                 progress=not args.no_progress)
    print(out)


if __name__ == "__main__":
    main()
