#!/usr/bin/env python
r"""Run a paper table's ablation: every row a pre-training run, then the table.

    python scripts/ablate.py --table 5               # built-in synthetic data: stage 0 + 5 rows x 3 seeds
    python scripts/ablate.py --table 5 --config configs/pretrain_howto_audioset.yaml \
        --set model.init_from=/path/to/ViT-B-32.pt --seeds 0
    python scripts/ablate.py --table 5 --set train.epochs=1 --seeds 0    # any key of the config, for every row

Rows are config overrides in configs/ablations/table<N>.yaml (--table may also name a YAML file).
Each row of each seed trains in <output-dir>/seed<k>/<i>_<row>/ (its own model/ folder, metrics.jsonl,
checkpoints); its model is then scored by zero-shot text->audio retrieval on the config's test
split (--eval-corpus for more corpora). The table (mean ± std over the seeds, the paper's numbers
beside MSR-VTT and VATEX) is printed and written as <output-dir>/<table>.json and .md; the last
stdout line is that JSON. Re-run the same command after a kill: finished rows are skipped, a killed
row resumes from its newest checkpoint. With the tensorboard package installed, every finished run's
metrics.jsonl is also written as a TensorBoard dashboard: tensorboard --logdir
<output-dir>/tensorboard/rows (one run per row and seed; stage 0 in <output-dir>/tensorboard/stage0).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.cli import HelpFormatter  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "pretrain_synthetic.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--table", default="5", help="table number (configs/ablations/table<N>.yaml) or a YAML file")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the pre-training config every row starts from")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of every run, e.g. --set train.epochs=1 (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of each repetition")
    parser.add_argument("--output-dir", type=Path, default=None, help="parent folder of the runs (default: the table's)")
    parser.add_argument("--eval-corpus", action="append", default=[], metavar="CORPUS",
                        help="score on this corpus's test split (repeatable; default: the config's evaluation corpus)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from clip4vla.config import ConfigError
    from clip4vla.data.records import AnnotationError
    from clip4vla.models.loading import CheckpointError
    from clip4vla.train.ablation import AblationInterrupted, format_table, load_table, run_ablation, table_path
    from clip4vla.train.checkpoint import CheckpointWriteError

    try:
        table = load_table(table_path(args.table))
        summary = run_ablation(table, args.config, args.overrides, args.seeds, args.output_dir, args.eval_corpus)
    except AblationInterrupted as stop:
        print(str(stop), file=sys.stderr, flush=True)
        return 143
    except (ConfigError, CheckpointError, CheckpointWriteError, AnnotationError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(format_table(summary))
    out = args.output_dir or Path(table.output_dir)
    print(f"written: {out / (table.name + '.json')}, {out / (table.name + '.md')} ({summary['wall_s']:.0f} s)")
    if summary["dashboard"]:
        print(f"dashboard: tensorboard --logdir {summary['dashboard']}")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
