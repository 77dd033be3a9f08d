"""Scripts that use a trained model report a bad model file or split the same way: exit 2 with the
reason on stderr, before any work, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_script(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("script, extra", [
    ("evaluate_retrieval.py", []),
    ("evaluate_caption.py", []),
    ("sweep_audio_type.py", []),
    ("pair_missing_audio.py", []),
    ("linear_probe.py", []),
    ("extract_features.py", ["--media", "{tmp}", "--out", "{tmp}/features"]),
])
def test_a_missing_quick_start_model_says_what_to_run(script, extra, tmp_path):
    model = tmp_path / "runs" / "pretrain_synthetic" / "model"
    result = run_script(script, ["--model", str(model), *(a.format(tmp=tmp_path) for a in extra)])
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {model}: model file or folder not found" in result.stderr
    assert "run `python scripts/pretrain.py` first" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("script, extra", [("evaluate_retrieval.py", ["--fusion", "g2g"]), ("sweep_audio_type.py", [])])
def test_an_unknown_split_is_named(script, extra, micro_export, synthetic_root, tmp_path):
    result = run_script(script, ["--model", str(micro_export), "--split", "nosuch", *extra,
                                 "--set", f"data.synthetic.root={synthetic_root}", "--set", "data.synthetic.clips=24",
                                 "--out" if script == "evaluate_retrieval.py" else "--plot", str(tmp_path / "out")])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: synthetic has no split 'nosuch'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
