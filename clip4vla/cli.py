"""What every script shares on its command line: flag types, errors, opening a model.

Scripts that use a trained model (evaluation, probes, pairing, extraction, search) open it, their
config and their split with the helpers here, so every one of them reports a bad file, key, flag
or split the same way: ``error: ...`` on stderr and exit status 2, before any work. This module
is below the training harness (``clip4vla.train.cli`` builds the training scripts on it), so an
inference script never imports training code.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from clip4vla.config import ConfigError, RunConfig, load_config
from clip4vla.files import nearest_existing, probe_writable

if TYPE_CHECKING:  # torch and the model stay out of argument parsing
    import torch

    from clip4vla.data.dataset import TriModalDataset
    from clip4vla.models.clip4vla import CLIP4VLA

__all__ = [
    "HelpFormatter", "add_model_arguments", "audio_type_arg", "device_arg", "evaluation_split", "exit_with_error", "load_config_and_model",
    "load_model_or_exit", "port_arg", "positive_int", "require_writable_file", "resolve_device",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every script's ``--help``: the module docstring kept as written but shown as plain text (the
    double backquotes that mark literals in the source left out), each flag's default shown (not for
    switches and flags without one, whose "None" / "False" / "[]" would say nothing)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(text.replace("``", ""), width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            text = action.help
        else:
            text = super()._get_help_string(action)
        return text and text.replace("``", "")


def add_model_arguments(parser: argparse.ArgumentParser, model_help: str, config: Path | None, config_help: str,
                        model_default: Path | None = None, split: bool = True, device: bool = True) -> None:
    """The flags of every script that runs a trained model on a corpus: ``--model``, ``--config``,
    ``--set`` (repeatable overrides), ``--split`` and ``--device``, worded and checked alike."""
    parser.add_argument("--model", type=Path, required=model_default is None, default=model_default, help=model_help)
    if config is not None:
        parser.add_argument("--config", type=Path, default=config, help=config_help)
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config value, e.g. --set data.synthetic.root=DIR (repeatable)")
    if split:
        parser.add_argument("--split", default=None, help="the split to use (default: the config's data.test_split)")
    if device:
        parser.add_argument("--device", type=device_arg, default="auto",
                            help="auto (a GPU if any), cpu, cuda or cuda:N")


def results_folder(model: Path) -> Path:
    """Where a script writes what it measured about ``--model`` when no ``--out`` is given: beside
    the model (for a run's ``model/`` folder or a file in it: the run's folder), and for a Hugging
    Face Hub id, which is no folder of the user's, the current folder."""
    if not model.exists():
        return Path(".")
    from clip4vla.models.model_folder import is_model_folder

    if model.is_file() and is_model_folder(model.parent):
        model = model.parent  # model.safetensors of a model folder
    return model.parent


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a batch size, a shard size, a top-k)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def port_arg(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
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
    from clip4vla.data.splits import evaluation_dataset

    split = split or config.data.test_split
    if split is None:
        exit_with_error("the config has no data.test_split: pass --split")
    options = SampleOptions.for_inference(model.preprocessing, config.data)
    try:
        return split, evaluation_dataset(config, split, purpose, options)
    except (ValueError, FileNotFoundError) as err:
        exit_with_error(err)


def require_writable_file(path: Path, flag: str) -> Path:
    """``path`` if a file can be written there later, else ``error: ...`` and exit status 2.

    Writable means: ``path`` is not a folder, its nearest existing parent is a folder, and a file
    can be created in it (tried, so read-only mounts and ACLs count, not only permission bits).
    Nothing is left behind: missing folders are created only when the file is written.
    """
    if path.is_dir():
        exit_with_error(f"{flag} {path} is a folder: give a file name")
    existing = nearest_existing(path.parent)
    if not existing.is_dir():
        exit_with_error(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        probe_writable(existing)
    except OSError as err:
        exit_with_error(f"{flag} {path}: cannot write in {existing} ({err.strerror or err}); "
                        "choose a writable location")
    return path
