#!/usr/bin/env python
r"""Draw one metric of several runs in one PNG (from their metrics.jsonl; no TensorBoard needed).

    python scripts/plot_runs.py runs/ablation_table5/seed0 --metric ta --out ta.png   # the five rows
    python scripts/plot_runs.py runs/pretrain_synthetic runs/other --metric val/t2a/R1

A RUN is a run's output folder (or its metrics.jsonl); a folder without a metrics.jsonl stands for
every run below it. Any numeric key of metrics.jsonl is a metric: loss, ta, va, aa, lr,
samples_per_s, skipped, val/t2a/R1, ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.cli import HelpFormatter, exit_with_error  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run output folders (or folders of runs)")
    parser.add_argument("--metric", default="loss", help="the metrics.jsonl key to draw against step")
    parser.add_argument("--out", type=Path, default=Path("runs.png"), help="the PNG to write")
    parser.add_argument("--title", default=None, help="plot title (default: the metric)")
    args = parser.parse_args(argv)
    from clip4vla.plotting import expand_runs, plot_runs

    try:
        runs = expand_runs(args.runs)
        drawn = plot_runs(runs, args.metric, args.out, args.title)
    except (ValueError, OSError) as err:
        exit_with_error(err)
    skipped = len(runs) - len(drawn)
    print(f"{args.out}: {args.metric} of {len(drawn)} runs" + (f" ({skipped} without it)" if skipped else ""))
    for label, points in drawn.items():
        print(f"  {label}: {points} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
