"""Shared by the tests of the data and search scripts: load a script as a module (its ``main`` and
``build_parser`` run in the test process, seconds faster than a subprocess), check a ``--help``, and
make a file whose name is not valid UTF-8."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"clip4vla_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_help_is_complete(parser: argparse.ArgumentParser) -> None:
    """Every flag and positional (of every sub-command) is described, defaults are shown, and no
    help text holds a run of spaces (what a line continuation inside a string literal leaves)."""
    from clip4vla.cli import HelpFormatter

    assert parser.formatter_class is HelpFormatter, parser.prog
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and "  " not in choice.help, choice.dest
            for sub in action.choices.values():
                assert_help_is_complete(sub)
            continue
        assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help"
        assert "  " not in action.help, f"{parser.prog}: {action.option_strings}: {action.help!r}"
    text = " ".join(parser.format_help().split())  # unwrapped
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in text, f"{parser.prog}: {action.option_strings}"


def copy_with_undecodable_name(source: Path, folder: Path, stem: bytes = b"caf\xe9") -> Path:
    """A copy of ``source`` named with a byte that is not valid UTF-8 (Latin-1 ``é``); the test is
    skipped where the file system refuses such names (macOS, Windows)."""
    target = Path(os.fsdecode(os.fsencode(folder) + b"/" + stem + source.suffix.encode()))
    try:
        shutil.copy(source, target)
    except (OSError, UnicodeEncodeError) as err:
        pytest.skip(f"this file system takes no non-UTF-8 file names ({err})")
    return target


def paper_corpora_settings(twins: Path, caption_path: Path) -> dict[str, Path]:
    """``--set`` keys that point the paper's pre-training configs at the HowTo100M, AudioSet and
    MSR-VTT format twins in ``twins`` (prepared media), with HowTo100M's captions at ``caption_path``."""
    return {
        "data.howto100m.caption_path": caption_path,
        "data.howto100m.prepared_dir": twins / "howto100m" / "prepared",
        "data.audioset.segments_csv": twins / "audioset" / "unbalanced_train_segments.csv",
        "data.audioset.ontology_json": twins / "audioset" / "ontology.json",
        "data.audioset.prepared_dir": twins / "audioset" / "prepared",
        "data.msrvtt.annotation_dir": twins / "msrvtt",
        "data.msrvtt.prepared_dir": twins / "msrvtt" / "prepared",
    }
