#!/usr/bin/env python
r"""Draw one metric of several runs in one PNG (from their metrics.jsonl; no TensorBoard needed).

    python scripts/plot_runs.py runs/ablation_table5/seed0 --metric ta     # the five rows -> runs/plots/
    python scripts/plot_runs.py runs/pretrain_synthetic runs/other --metric val/t2a/R1 --out cmp.png

A RUN is a run's output folder (or its metrics.jsonl); a folder without a metrics.jsonl stands for
every run below it. Any numeric key of metrics.jsonl is a metric: loss, ta (the text-audio NCE),
va (video-audio), aa (audio vs its masked copy), lr, samples_per_s, skipped, val/t2a/R1 (text->audio
R@1 on validation), ...; the title spells the key out. Lines of a log that cannot be read are
skipped and counted.
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
    parser.add_argument("--out", type=Path, default=None,
                        help="the PNG to write (default: runs/plots/<metric>.png)")
    parser.add_argument("--title", default=None, help="plot title (default: the metric, spelled out)")
    args = parser.parse_args(argv)
    from clip4vla.plotting import expand_runs, metric_tag, plot_runs

    out = args.out or Path("runs") / "plots" / (metric_tag(args.metric).replace("/", "_") + ".png")
    try:
        runs = expand_runs(args.runs)
        plot = plot_runs(runs, args.metric, out, args.title)
    except (ValueError, OSError) as err:
        exit_with_error(err)
    skipped = len(runs) - len(plot.points)
    print(f"{plot.path}: {args.metric} of {len(plot.points)} runs" + (f" ({skipped} without it)" if skipped else ""))
    for label, points in plot.points.items():
        bad = plot.unreadable.get(label, 0)
        note = f" ({bad} unreadable line{'s' if bad > 1 else ''} of metrics.jsonl skipped)" if bad else ""
        print(f"  {label}: {points} points{note}")
    for label in sorted(set(plot.unreadable) - set(plot.points)):
        print(f"  {label}: no {args.metric} ({plot.unreadable[label]} unreadable lines of metrics.jsonl skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
