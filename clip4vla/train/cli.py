"""The command line the scripts share.

Training scripts stay thin (``scripts/pretrain.py`` is a few lines): they name their task, their
config class and their default config, and ``run_training`` parses ``--config`` / ``--set`` /
``--resume`` / ``--output-dir``, turns config mistakes into exit status 2 with a message before any
work, runs the loop, prints the task's table and, last on stdout, one JSON object that scripts can
read. Scripts that use a trained model (evaluation, probes, pairing, extraction) open it, their
config and their split with the helpers below, so every one of them reports a bad file, key or
split the same way: ``error: ...`` on stderr and exit status 2, before any work.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from clip4vla.config import ConfigError, RunConfig, load_config

if TYPE_CHECKING:  # torch and the model stay out of argument parsing
    import torch

    from clip4vla.data.dataset import TriModalDataset
    from clip4vla.models.clip4vla import CLIP4VLA


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every script's ``--help``: the module docstring kept as written, each flag's default shown."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a batch size, a shard size, a top-k)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def audio_type_arg(text: str) -> str | float:
    """argparse type for ``--audio-type``: ``vb``, ``nb``, ``auto`` or a finite mixing ratio in [0, 1]."""
    if text in ("vb", "nb", "auto"):
        return text
    try:
        ratio = float(text)
    except ValueError:
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:  # also false for nan
        raise argparse.ArgumentTypeError(f"expected vb, nb, auto or a number in [0, 1], got {text!r}")
    return ratio


def device_arg(text: str) -> str:
    """argparse type for ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this
    machine (a GPU asked for where there is none is an argument error, not a traceback later)."""
    if text in ("auto", "cpu"):
        return text
    if not re.fullmatch(r"cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees no CUDA GPU on this machine (use cpu or auto)")
    index = int(text.split(":")[1]) if ":" in text else 0
    if index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return text


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
    from clip4vla.train.loop import Trainer, TrainingInterrupted

    START_UP_ERRORS = (CheckpointError, CheckpointWriteError, AnnotationError, FileNotFoundError)

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    try:
        config = load_config(config_cls, args.config or default_config, overrides)
        trainer = Trainer(config, task, resume=args.resume, overwrite=args.overwrite,
                          allow_config_change=args.allow_config_change)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except START_UP_ERRORS as err:  # bad input found before any training: the message says it all
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = trainer.fit()
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr, flush=True)
        trainer.close()
        return 143  # 128 + SIGTERM: the job is not finished; schedulers may requeue it
    if trainer.dist.is_main:
        if result:
            print("\n" + trainer.task.report(result))
            summary = {**trainer.task.summary(result), "skipped": result["skipped"]}
        else:
            print(f"\nno test split configured (data.test_split is null): the model is in {trainer.out_dir / 'model.pt'}")
            summary = {"split": None, "model": str(trainer.out_dir / "model.pt")}
        print(json.dumps(summary), flush=True)
    trainer.close()
    return 0


# ---------------------------------------------------------------------- scripts using a model


def exit_with_error(error: Any) -> NoReturn:
    """``error: <message>`` on stderr and exit status 2 (what argparse does for bad arguments)."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; any other name as checked by ``device_arg``."""
    import torch

    try:
        name = device_arg(name)
    except argparse.ArgumentTypeError as err:
        exit_with_error(f"--device: {err}")

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model_or_exit(model_path: Path) -> CLIP4VLA:
    """``clip4vla.load_model``; a missing, unreadable or foreign file exits 2 with its reason."""
    from clip4vla import load_model
    from clip4vla.models.loading import CheckpointError

    try:
        return load_model(model_path)
    except CheckpointError as err:
        exit_with_error(err)


def load_config_and_model(config_cls: type[RunConfig], config_path: Path, overrides: list[str],
                          model_path: Path) -> tuple[Any, CLIP4VLA]:
    """The run config (with ``--set`` overrides) and the model of a script; mistakes exit 2."""
    try:
        config = load_config(config_cls, config_path, overrides)
    except ConfigError as err:
        exit_with_error(err)
    return config, load_model_or_exit(model_path)


def evaluation_split(config: RunConfig, model: CLIP4VLA, split: str | None, purpose: str
                     ) -> tuple[str, TriModalDataset]:
    """The split to score (``--split``, else the config's test split) as a dataset read with the
    model's own preprocessing and the config's media route, i.e. inputs as in training."""
    from clip4vla.data.dataset import SampleOptions
    from clip4vla.train.task import evaluation_dataset

    split = split or config.data.test_split
    if split is None:
        exit_with_error("the config has no data.test_split: pass --split")
    options = SampleOptions.for_inference(model.preprocessing, config.data)
    try:
        return split, evaluation_dataset(config, split, purpose, options)
    except (ValueError, FileNotFoundError) as err:
        exit_with_error(err)
