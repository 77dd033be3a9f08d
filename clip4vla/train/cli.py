"""The command line the scripts share.

Training scripts stay thin (``scripts/pretrain.py`` is a few lines): they name their task, their
config class and their default config, and ``run_training`` parses ``--config`` / ``--set`` /
``--resume`` / ``--output-dir``, turns config mistakes into exit status 2 with a message before any
work, runs the loop, prints the task's table and, last on stdout, one JSON object that scripts can
read. The flag types and model-opening helpers of every script live below the harness, in
``clip4vla.cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable


from clip4vla.cli import HelpFormatter
from clip4vla.config import ConfigError, RunConfig, config_text, load_config


def parse_args(description: str, default_config: Path, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help=f"YAML config (default: {default_config.name})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=...")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: train on with a config that differs from the checkpoint's "
                             "(learning rate, precision, ...); without it such a resume is refused")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a fresh run in an output dir that holds another run's checkpoints (deletes them)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key --set can change, with its value) and exit")
    return parser.parse_args(argv)


def run_training(
    description: str,
    config_cls: type[RunConfig],
    task: Callable,
    default_config: Path,
    argv: list[str] | None = None,
) -> int:
    """Parse, train, report; the exit status of a training script."""
    args = parse_args(description, default_config, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from clip4vla.data.records import AnnotationError  # torch and data: after argument errors
    from clip4vla.models.loading import CheckpointError
    from clip4vla.train.checkpoint import CheckpointWriteError
    from clip4vla.train.distributed import DistributedSetupError
    from clip4vla.train.loop import Trainer, TrainingInterrupted
    from clip4vla.train.run_folder import ExportError

    # Bad input found while the run starts (before any step): the message says it all. ValueError
    # covers every check of data and config values; OSError missing or unusable files and folders.
    START_UP_ERRORS = (CheckpointError, CheckpointWriteError, AnnotationError, DistributedSetupError, ValueError, OSError)

    overrides = list(args.overrides)
    if args.output_dir is not None:  # "" too: the config check refuses it by name
        overrides.append(f"train.output_dir={args.output_dir}")
    try:
        config = load_config(config_cls, args.config or default_config, overrides)
        if args.print_config:
            print(config_text(config), end="")
            return 0
        trainer = Trainer(config, task, resume=args.resume, overwrite=args.overwrite,
                          allow_config_change=args.allow_config_change)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except START_UP_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = trainer.fit()
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr, flush=True)
        trainer.close()
        return 143  # 128 + SIGTERM: the job is not finished; schedulers may requeue it
    except ExportError as err:  # the test ran: show its table before saying what was not written
        if err.result:
            print("\n" + trainer.task.report(err.result), flush=True)
        print(f"error: {err}", file=sys.stderr, flush=True)
        trainer.close()
        return 1
    if trainer.dist.is_main:
        if result:
            print("\n" + trainer.task.report(result))
            summary = {**trainer.task.summary(result), "skipped": result["skipped"],
                       **({"fp16_skipped": result["fp16_skipped"]} if "fp16_skipped" in result else {})}
        else:
            print(f"\nno test split configured (data.test_split is null): the model is in {trainer.out_dir / 'model'}")
            summary = {"split": None, "model": str(trainer.out_dir / "model")}
        print(json.dumps(summary), flush=True)
    trainer.close()
    return 0
