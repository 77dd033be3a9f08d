"""The dashboard: TensorBoard events carry metrics.jsonl's numbers (read back with TensorBoard's own
reader, also after a killed run is resumed), a clear start-up error without the package, and
scripts/plot_runs.py for people who do not run TensorBoard."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clip4vla.config import ConfigError, PretrainConfig, load_config
from conftest import micro_pretrain_settings

REPO = Path(__file__).resolve().parent.parent


def trainer(root: Path, out: Path, resume: bool = False, **extra: object):
    from clip4vla.train.loop import Trainer
    from clip4vla.train.pretrain import PretrainTask

    settings = {**micro_pretrain_settings(root, out), "train.batch_size": 4, "train.max_steps": 4,
                "train.eval_every_steps": 2, "train.tensorboard": True, "train.device": "cpu", **extra}
    config = load_config(PretrainConfig, None, [f"{k}={v}" for k, v in settings.items()])
    return Trainer(config, PretrainTask, resume=resume)


def events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series as TensorBoard itself reads the run's event folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def logged(run: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((row["step"], float(value)))
    return series


def assert_same(run: Path) -> None:
    got, want = events(run), logged(run)
    assert set(got) == set(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # each step once, in order
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-6), tag


def test_events_match_metrics_jsonl_and_survive_a_resume(synthetic_root, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    t = trainer(synthetic_root, out)
    t.fit()
    t.close()
    tags = set(events(out))
    # losses, learning rate, throughput, skipped samples, every validation metric
    assert {"loss", "ta", "va", "aa", "lr", "samples_per_s", "skipped", "val/t2a/R1", "val/t2a/MedR",
            "val/audio_R1"} <= tags
    assert_same(out)
    # as after a kill at step 4 whose last checkpoint was step 2: the old event file holds steps 3-4,
    # which the resumed run computes again; TensorBoard must show each step once, as metrics.jsonl
    for step in (3, 4):
        (out / "checkpoints" / f"ckpt_{step:06d}.pt").unlink()
    (out / "model.pt").unlink()
    t = trainer(synthetic_root, out, resume=True)
    t.fit()
    t.close()
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    assert_same(out)


def test_tensorboard_on_without_the_package_is_a_start_up_error(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        trainer(synthetic_root, out)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert not (out / "metrics.jsonl").exists()


def test_plot_runs_draws_a_metric_of_several_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, lr in (("a", 1e-3), ("b", 1e-4)):
        folder = runs / name
        folder.mkdir(parents=True)
        rows = [{"step": s, "epoch": 0, "loss": 3.0 - s * lr * 100, "lr": lr} for s in range(1, 6)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = str(REPO / "scripts" / "plot_runs.py")
    png = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, script, str(runs), "--metric", "loss", "--out", str(png)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "loss of 2 runs" in done.stdout and "a: 5 points" in done.stdout  # the cut last line is left out
    # bad input: one line and exit 2, nothing written (in-process: the same main() as above)
    spec = importlib.util.spec_from_file_location("plot_runs", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for args, message in (([str(runs), "--metric", "val/t2a/R1"], "error: no run logged 'val/t2a/R1'; these did: "
                                                                   "epoch, loss, lr"),
                          ([str(tmp_path / "nowhere")], "no metrics.jsonl")):
        with pytest.raises(SystemExit) as stop:
            module.main([*args, "--out", str(tmp_path / "x.png")])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
