"""The pre-training job end to end on a small synthetic set: outputs, resume, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clip4vla.config import PretrainConfig, load_config
from conftest import micro_pretrain_settings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pretrain.py"


def micro_overrides(root: Path, out: Path, **extra: object) -> list[str]:
    settings = micro_pretrain_settings(root, out)
    settings.update({"optim.lr": 1e-3, "train.epochs": 2, "train.batch_size": 4, "train.keep_last": 10})
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


def expected_steps(root: Path, epochs: int = 2, batch: int = 4) -> int:
    n_train = json.loads((root / "synthetic_meta.json").read_text())["splits"]["train"]
    return epochs * (n_train // batch)


def run_script(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, **kwargs)


def final_model(out: Path) -> dict[str, torch.Tensor]:
    newest = sorted((out / "checkpoints").glob("ckpt_*.pt"))[-1]
    return torch.load(newest, map_location="cpu", weights_only=True)["model"]


def test_pretrain_script_writes_outputs_and_prints_json_last(synthetic_root, tmp_path):
    out = tmp_path / "run"
    sets = micro_overrides(synthetic_root, out, **{"train.checkpoint_every_steps": 0, "data.cache_decoded": True,
                                                   "train.card.license": "mit"})
    result = run_script([arg for s in sets for arg in ("--set", s)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    for task in ("t2a", "v2a", "t2v"):
        assert set(last[task]) >= {"R1", "R5", "R10", "MedR"}
        assert 0.0 <= last[task]["R1"] <= 100.0
    assert last["chance"]["R1"] == pytest.approx(100.0 / last["n_clips"])
    assert (out / "loss_curves.png").stat().st_size > 1000
    saved = load_config(PretrainConfig, out / "config.yaml")
    assert saved.model.arch == "micro" and saved.train.batch_size == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == expected_steps(synthetic_root) and all(torch.isfinite(torch.tensor(losses)))
    assert {"ta", "va", "aa", "lr", "grad_norm"} <= set(next(r for r in rows if "loss" in r))
    assert any(k.startswith("val/t2a/") for r in rows for k in r)
    # the model folder's card shows the very table the run printed, and its numbers in the front matter
    table = result.stdout[result.stdout.index("zero-shot retrieval on the test split"):].split("\n{")[0].rstrip()
    card = (out / "model" / "README.md").read_text()
    assert table in card and "`mit`." in card and "random weights (no model.init_from)" in card
    meta = yaml.safe_load(card.split("---\n")[1])
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["t2a/R1"] == pytest.approx(last["t2a"]["R1"], abs=1e-4) and meta["license"] == "mit"


def test_killed_run_resumes_to_bitwise_identical_weights(synthetic_root, tmp_path):
    """SIGKILL mid-run, --resume, and the final weights equal an uninterrupted run's (CPU, fp32)."""
    sets = lambda out: [arg for s in micro_overrides(synthetic_root, out) for arg in ("--set", s)]  # noqa: E731
    straight = tmp_path / "straight"
    done = run_script(sets(straight), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *sets(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "checkpoints").glob("ckpt_*.pt"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list((killed / "checkpoints").glob("ckpt_*.pt")))
    total = expected_steps(synthetic_root)
    assert 2 <= n_before < total  # killed mid-run

    resumed = run_script([*sets(killed), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = final_model(straight), final_model(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the metrics log holds each step once, as if the run had never stopped
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, total + 1))


def test_cached_run_with_parallel_decoding_trains_identical_weights(synthetic_root, tmp_path):
    """data.cache_decoded decodes every split up front in worker processes; the weights must not move."""
    finals = []
    for cached in (False, True):
        out = tmp_path / f"cached_{cached}"
        args = [a for s in micro_overrides(synthetic_root, out, **{"data.cache_decoded": cached}) for a in ("--set", s)]
        done = run_script(args, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("decode:" in done.stderr) is cached  # the decoding pass ran (its progress bar)
        finals.append(final_model(out))
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def test_wrong_config_key_fails_before_any_work(tmp_path):
    out = tmp_path / "never"
    result = run_script(["--set", "train.epoch=3", "--set", f"train.output_dir={out}"], timeout=60)
    assert result.returncode == 2
    assert "train.epoch" in result.stderr and "epochs" in result.stderr
    assert not out.exists()


def test_zero_usable_samples_fails_at_startup(synthetic_root, tmp_path):
    from clip4vla.train.loop import Trainer
    from clip4vla.train.pretrain import PretrainTask

    overrides = micro_overrides(synthetic_root, tmp_path / "out") + [
        "data.corpus=msrvtt", f"data.msrvtt.annotation_dir={synthetic_root}",
        f"data.msrvtt.video_dir={tmp_path / 'empty_video_dir'}",
    ]
    with pytest.raises(ValueError, match="no usable training sample"):
        Trainer(load_config(PretrainConfig, None, overrides), PretrainTask)


def test_non_finite_loss_names_the_batch_and_writes_no_checkpoint(synthetic_root, tmp_path, monkeypatch):
    from clip4vla.train.loop import NonFiniteLossError, Trainer
    from clip4vla.train.pretrain import PretrainTask

    out = tmp_path / "nan"
    trainer = Trainer(load_config(PretrainConfig, None, micro_overrides(synthetic_root, out)), PretrainTask)
    original = trainer.stepper.loss_module.forward

    def poisoned(*args, **kwargs):
        total, parts = original(*args, **kwargs)
        return total * float("nan"), parts

    monkeypatch.setattr(trainer.stepper.loss_module, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 1.*video\d+"):
        trainer.fit()
    assert not list((out / "checkpoints").glob("ckpt_*.pt"))


def test_bf16_on_a_cpu_without_bf16_instructions_warns(synthetic_root, tmp_path, monkeypatch, caplog):
    from clip4vla.train import loop
    from clip4vla.train.pretrain import PretrainTask

    ratio = loop.cpu_bf16_slowdown()
    assert ratio > 0 and math.isfinite(ratio)  # a timing ratio (~50 on an AVX2-only EPYC)
    overrides = micro_overrides(synthetic_root, tmp_path / "bf16", **{"train.precision": "bf16"})
    for slowdown, warned in ((100.0, True), (0.5, False)):
        monkeypatch.setattr(loop, "cpu_bf16_slowdown", lambda: slowdown)
        caplog.clear()
        with caplog.at_level("WARNING", logger="clip4vla.train.loop"):
            loop.Trainer(load_config(PretrainConfig, None, overrides), PretrainTask).close()
        assert ("100x slower than fp32" in caplog.text) is warned, caplog.text


