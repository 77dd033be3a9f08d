"""``--help`` of the training, probe and data scripts: every flag described, defaults shown, and
the examples printed as written (a backslash-newline in a plain docstring once glued two lines of
an example together with a run of spaces)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def help_text(name: str, capsys) -> str:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["pretrain", "finetune_retrieval", "finetune_caption", "linear_probe", "make_synthetic",
                                  "ablate", "plot_runs"])
def test_help_describes_every_flag_and_keeps_examples_as_written(name, capsys):
    text = help_text(name, capsys)
    description, options = text.split("\noptions:\n")
    for line in description.splitlines():
        assert not re.search(r"\S {3,}--?[a-z]", line), f"two example lines glued together: {line!r}"
        if line.rstrip().endswith("\\"):  # a shell continuation is followed by its indented next line
            assert description.split(line + "\n", 1)[1].startswith("        "), line
    lines = options.splitlines()
    flags = [i for i, line in enumerate(lines) if line.startswith("  -")]
    assert flags
    for i in flags:  # help text on the flag's own line (after the metavar) or on the next, indented one
        # a flag, its metavar (nargs="+": "N [N ...]"), an alias; then the help on the same line or the next
        own = re.match(r"  (-\S+(?: \S+(?: \[\S+ \.\.\.\])?)?(?:, -\S+(?: \S+)?)?)(?:  +(\S.*))?$", lines[i])
        assert own, lines[i]
        described = own.group(2) or (i + 1 < len(lines) and lines[i + 1].startswith(" " * 20))
        assert described, f"{name}: {own.group(1)} has no help"

def test_pretrain_help_says_what_first_use_writes_and_how_to_list_the_keys(capsys):
    text = help_text("pretrain", capsys)
    assert "~75 MB" in text and "data/synthetic" in text
    assert "--print-config" in text.split("\noptions:\n")[0]


def test_defaults_are_shown(capsys):
    assert "(default: 2)" in help_text("make_synthetic", capsys)  # --workers
    assert "(default: auto)" in help_text("linear_probe", capsys)  # --device


@pytest.mark.parametrize("name", sorted(p.stem for p in SCRIPTS.glob("*.py")))
def test_help_is_plain_text_without_restructuredtext_markup(name, capsys):
    """The docstrings a ``--help`` prints are written for the source (``literal`` markup); a terminal
    shows them plain (issue 29: 17)."""
    text = help_text(name, capsys)
    assert "usage:" in text and "``" not in text, [line for line in text.splitlines() if "``" in line]
