"""The library stays below the training harness: nothing outside ``clip4vla/train/`` imports it,
and scripts that train nothing (evaluation, probes, extraction, search, data preparation) do not
either. Read from the source (AST), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "clip4vla"
# ablate: runs of the loop; plan_memory: plans (and with --measure, measures) a pre-training step's memory
TRAINING_SCRIPTS = {"pretrain.py", "finetune_retrieval.py", "finetune_caption.py", "ablate.py", "plan_memory.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def harness_imports(path: Path) -> list[str]:
    return sorted(m for m in imported_modules(path) if m == "clip4vla.train" or m.startswith("clip4vla.train."))


def test_the_check_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from clip4vla.train.loop import Trainer\n")
    assert harness_imports(probe) == ["clip4vla.train.loop", "clip4vla.train.loop.Trainer"]


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if "train" not in p.relative_to(PACKAGE).parts),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_library_modules_do_not_import_the_training_harness(path):
    assert harness_imports(path) == []


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "scripts").glob("*.py") if p.name not in TRAINING_SCRIPTS),
                         ids=lambda p: p.name)
def test_scripts_that_train_nothing_do_not_import_the_training_harness(path):
    assert harness_imports(path) == []
