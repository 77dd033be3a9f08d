"""What a user installs and what the work tree keeps: extras named as a current pip finds them,
and the README's commands writing only where git ignores."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "clip4vla").rglob("*.py")),
             *sorted((REPO / "tests").glob("*.py")), *sorted((REPO / "scripts").glob("*.py")), REPO / ".ci" / "run"]


def setup_extras() -> dict[str, list[str]]:
    """``extras_require`` of setup.py, read without running it."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))


def test_extras_are_named_in_the_form_pip_looks_them_up_by():
    """pip normalises a requested extra (PEP 685: lower case, runs of - _ . as one -) and, with
    current setuptools metadata, finds only an extra whose name already has that form."""
    extras = setup_extras()
    assert extras and all(name == re.sub(r"[-_.]+", "-", name).lower() for name in extras), sorted(extras)
    mentioned = {m for path in DOCUMENTS if path.is_file()
                 for group in re.findall(r'\.\[([\w.,\- ]+)\]', path.read_text(encoding="utf-8", errors="replace"))
                 for m in (x.strip() for x in group.split(",")) if m}
    assert mentioned and mentioned <= set(extras), f"named but not in setup.py: {mentioned - set(extras)}"


def test_the_readmes_data_and_outputs_are_ignored_by_git():
    """The README's commands write their data and outputs where git ignores them: a newcomer's work
    tree shows no untracked datasets after following it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git work tree")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    named = [p for p in re.findall(r"--out (\S+?)[`\s]", text) if not p.startswith("/")]
    # a file inside each output folder: git matches a pattern such as "/features/" to folders only
    outputs = {p if "." in Path(p).name else f"{p.rstrip('/')}/x" for p in named}
    outputs |= {"runs/pretrain_synthetic/model", "data/synthetic/videos/.clip4vla-index.pt",
                "data/synthetic/videos/.clip4vla-index.thumbs/x.jpg", "features/synthetic/shard_00000.pt"}
    assert {"data/synthetic_300/x", "twins/vatex/x", "data/howto100m/shards/x"} <= outputs
    checked = subprocess.run(["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"], cwd=REPO, text=True,
                             input="\n".join(sorted(outputs)) + "\n", capture_output=True)
    unignored = [line.split("\t")[-1] for line in checked.stdout.splitlines() if line.startswith("::")]
    assert not unignored, f"README outputs git would show as untracked: {unignored}"
