"""Long runs that cannot silently go wrong: one test per hostile case, on micro synthetic runs.

Each case is what a user did (resume with another schedule, reuse an output folder, diverge,
fill the disk, get pre-empted...) and what must happen instead of a silent wrong result.
"""

from __future__ import annotations

import json
import shutil
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip4vla.config import ConfigError, PretrainConfig, load_config
from clip4vla.train import checkpoint as checkpoint_module
from clip4vla.train.checkpoint import CheckpointWriteError
from clip4vla.train.loop import NonFiniteLossError, NonFiniteWeightsError, Trainer
from clip4vla.train.pretrain import PretrainTask
from conftest import PRETRAIN_CLIPS, micro_pretrain_settings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pretrain.py"


def settings(root: Path, out: Path, **extra: object) -> dict[str, object]:
    values = micro_pretrain_settings(root, out)
    values.update({"optim.lr": 1e-3, "train.epochs": 2, "train.batch_size": 4, "train.keep_last": 20})
    values.update(extra)
    return values


def overrides(root: Path, out: Path, **extra: object) -> list[str]:
    return [f"{k}={v}" for k, v in settings(root, out, **extra).items()]


def args(root: Path, out: Path, **extra: object) -> list[str]:
    return [a for s in overrides(root, out, **extra) for a in ("--set", s)]


def run_script(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=timeout)


def trainer(root: Path, out: Path, resume: bool = False, **extra: object) -> Trainer:
    return Trainer(load_config(PretrainConfig, None, overrides(root, out, **extra)), PretrainTask, resume=resume)


def step_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def steps_per_epoch(root: Path) -> int:
    return json.loads((root / "synthetic_meta.json").read_text())["splits"]["train"] // 4


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# -------------------------------------------------------------- 1. resume with a changed config
def test_resume_with_more_epochs_extends_the_schedule(synthetic_root, tmp_path, caplog):
    out, per_epoch = tmp_path / "run", steps_per_epoch(synthetic_root)
    trainer(synthetic_root, out).fit()
    assert step_rows(out)[-1]["lr"] == 0.0  # the 2-epoch cosine ended at lr 0
    with caplog.at_level("WARNING"):
        trainer(synthetic_root, out, resume=True, **{"train.epochs": 4}).fit()
    rows = step_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 4 * per_epoch + 1))
    later = [r["lr"] for r in rows if r["step"] > 2 * per_epoch]
    assert all(lr > 0 for lr in later[:-1]), later  # not the restored horizon's lr 0
    assert f"now ends at step {4 * per_epoch} (was {2 * per_epoch})" in caplog.text
    assert load_config(PretrainConfig, out / "config.yaml").train.epochs == 4  # records what was used


def test_resume_refuses_a_changed_learning_rate_unless_asked(synthetic_root, tmp_path):
    out = tmp_path / "run"
    assert run_script(args(synthetic_root, out, **{"train.max_steps": 3})).returncode == 0
    refused = run_script(["--resume", *args(synthetic_root, out, **{"train.max_steps": 6, "optim.lr": 3e-2})])
    assert refused.returncode == 2
    assert "optim.lr was 0.001, now 0.03" in refused.stderr and "--allow-config-change" in refused.stderr
    assert load_config(PretrainConfig, out / "config.yaml").optim.lr == 1e-3  # nothing rewritten
    allowed = run_script(["--resume", "--allow-config-change", *args(synthetic_root, out, **{"train.max_steps": 6,
                                                                                            "optim.lr": 3e-2})])
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    rows = step_rows(out)
    # from step 4 on: the new lr on the cosine of a 6-step run (warm-up 1 step); a row logs the
    # lr set for the next step
    for row in rows[3:]:
        factor = 0.5 * (1 + math.cos(math.pi * (row["step"] - 1) / 5))
        assert row["lr"] == pytest.approx(3e-2 * factor, rel=1e-6, abs=1e-12), row
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "event" in line]
    assert events[0]["changed"]["optim.lr"] == [1e-3, 3e-2]
    assert load_config(PretrainConfig, out / "config.yaml").optim.lr == pytest.approx(3e-2)


def test_resume_of_a_finished_run_tests_again_and_writes_nothing(synthetic_root, tmp_path):
    out = tmp_path / "run"
    first = trainer(synthetic_root, out, **{"train.max_steps": 2}).fit()

    def files() -> dict[str, tuple]:
        return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
                for p in sorted(out.rglob("*")) if p.is_file()}

    before = files()
    assert {"model/model.safetensors", "model/README.md", "config.yaml", "metrics.jsonl", "loss_curves.png"} <= set(before)
    again = trainer(synthetic_root, out, resume=True, **{"train.max_steps": 2}).fit()
    assert files() == before  # every file: same bytes, same inode, same mtime
    assert again["metrics"] == first["metrics"]  # the same test table
    # a run whose model folder was never written (a full disk at the end) is finished by the resume
    shutil.rmtree(out / "model")
    trainer(synthetic_root, out, resume=True, **{"train.max_steps": 2}).fit()
    assert (out / "model" / "model.safetensors").is_file()


def test_resume_never_changes_the_batch(synthetic_root, tmp_path):
    out = tmp_path / "run"
    trainer(synthetic_root, out, **{"train.max_steps": 2}).fit()
    config = load_config(PretrainConfig, None, overrides(synthetic_root, out, **{"train.batch_size": 2}))
    with pytest.raises(ConfigError, match="cannot resume .* train.batch_size was 4, now 2"):
        Trainer(config, PretrainTask, resume=True, allow_config_change=True)


# ------------------------------------------------------ 8. architecture / precision on resume
def test_resume_names_architecture_and_precision_changes(synthetic_root, tmp_path):
    out = tmp_path / "run"
    trainer(synthetic_root, out, **{"train.max_steps": 2}).fit()
    for key, value in (("model.arch", "tiny"), ("model.audio_type_token", False), ("train.precision", "fp16")):
        config = load_config(PretrainConfig, None, overrides(synthetic_root, out, **{key: value}))
        with pytest.raises(ConfigError, match=rf"{key} was .*, now {value!r}"):
            Trainer(config, PretrainTask, resume=True)
    config = load_config(PretrainConfig, None, overrides(synthetic_root, out, **{"model.arch": "tiny"}))
    with pytest.raises(Exception, match="architecture cannot change on resume"):
        Trainer(config, PretrainTask, resume=True, allow_config_change=True)
    # the activation (and the open_clip name that implies one) is architecture too: config.yaml must
    # never describe a model the run does not have
    for key, value in (("model.activation", "gelu"), ("model.open_clip_model", "ViT-B-32-quickgelu")):
        config = load_config(PretrainConfig, None, overrides(synthetic_root, out, **{key: value}))
        with pytest.raises(ConfigError, match=rf"architecture cannot change on resume \({key} was None, now {value!r}\)"):
            Trainer(config, PretrainTask, resume=True, allow_config_change=True)
    assert load_config(PretrainConfig, out / "config.yaml").model.activation is None
    # an fp32 checkpoint (no loss-scaler state) resumes in bf16 when asked: no GradScaler traceback
    config = load_config(PretrainConfig, None, overrides(synthetic_root, out, **{
        "train.precision": "bf16", "train.max_steps": 3}))
    Trainer(config, PretrainTask, resume=True, allow_config_change=True).fit()
    assert [r["step"] for r in step_rows(out)] == [1, 2, 3]


def test_a_checkpoint_of_another_task_is_refused(synthetic_root, tmp_path):
    out = tmp_path / "run"
    trainer(synthetic_root, out, **{"train.max_steps": 1}).fit()
    path = out / "checkpoints" / "ckpt_000001.pt"
    state = torch.load(path, weights_only=True)
    state["task"] = "retrieval"
    torch.save(state, path)
    with pytest.raises(ConfigError, match="checkpoint of a 'retrieval' run; this is 'pretrain'"):
        trainer(synthetic_root, out, resume=True)


# ------------------------------------------------------------------ 2. a used output folder
def test_a_fresh_run_does_not_write_over_another_run(synthetic_root, tmp_path):
    out = tmp_path / "run"
    assert run_script(args(synthetic_root, out, **{"train.max_steps": 2})).returncode == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    again = run_script(args(synthetic_root, out, **{"train.max_steps": 2, "train.seed": 5}))
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--overwrite" in again.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    fresh = run_script(["--overwrite", *args(synthetic_root, out, **{"train.max_steps": 1, "train.seed": 5})])
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt_*.pt")) == ["ckpt_000001.pt"]
    assert load_config(PretrainConfig, out / "config.yaml").train.seed == 5


# ------------------------------------------------------------------- 3. poisoned checkpoints
def test_a_diverging_run_never_checkpoints_non_finite_weights(synthetic_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises((NonFiniteWeightsError, NonFiniteLossError)) as err:
        trainer(synthetic_root, out, **{"optim.lr": 1e38}).fit()
    if isinstance(err.value, NonFiniteWeightsError):
        assert "probably too high" in str(err.value)
    for path in (out / "checkpoints").glob("ckpt_*.pt"):
        assert all(torch.isfinite(t).all() for t in weights(path).values()), path


def test_resume_skips_a_non_finite_checkpoint_and_says_which(synthetic_root, tmp_path, caplog):
    out = tmp_path / "run"
    trainer(synthetic_root, out, **{"train.max_steps": 3}).fit()
    path = out / "checkpoints" / "ckpt_000003.pt"
    state = torch.load(path, weights_only=True)  # as an older clip4vla could have written it
    state["model"]["audio.type_embedding"] = torch.full_like(state["model"]["audio.type_embedding"], float("nan"))
    torch.save(state, path)
    with pytest.warns(RuntimeWarning, match="ckpt_000003.pt: 1 weight tensors are not finite"):
        with caplog.at_level("INFO"):
            resumed = trainer(synthetic_root, out, resume=True, **{"train.max_steps": 4})
    assert resumed.step == 2 and "resumed from" in caplog.text and "ckpt_000002.pt" in caplog.text
    with pytest.raises(FloatingPointError, match="refusing to write checkpoint"):
        resumed.folder.checkpoints.save(9, state)


# ---------------------------------------------------------------- 5. config values at start-up
@pytest.mark.parametrize("key, value", [
    ("data.max_frames", 0), ("audio.max_seconds", 0), ("train.batch_size", 0), ("train.accum_steps", 0),
    ("train.epochs", 0), ("train.log_every", 0), ("train.eval_every_epochs", 0), ("data.max_words", 0),
    ("train.checkpoint_every_steps", -1), ("train.output_dir", "' '"), ("train.dist_timeout_s", 0),
])
def test_impossible_values_fail_at_start_up_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        load_config(PretrainConfig, None, [f"{key}={value}"])


def test_a_config_mistake_exits_2_before_any_data_work(synthetic_root, tmp_path):
    out = tmp_path / "never"
    result = run_script(args(synthetic_root, out, **{"data.max_frames": 0}), timeout=60)
    assert result.returncode == 2 and "data.max_frames=0: must be at least 1" in result.stderr
    assert not out.exists()
    result = run_script(["--set", "train.epochs=[1,"], timeout=60)  # 13: unparsable value
    assert result.returncode == 2 and "train.epochs=[1," in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------- 6, 9. the metrics log and the checkpoint
def test_metrics_log_agrees_with_the_checkpoint_whatever_happened_to_the_file(synthetic_root, tmp_path):
    out = tmp_path / "run"
    trainer(synthetic_root, out).fit()
    total = len(step_rows(out))
    # as after a kill between a checkpoint's rename and a log write: rows lost, a partial last line
    for path in sorted((out / "checkpoints").glob("ckpt_*.pt"))[-2:]:
        path.unlink()
    kept = (out / "metrics.jsonl").read_text().splitlines()[:2]
    (out / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 5, "lo')
    trainer(synthetic_root, out, resume=True).fit()
    assert [r["step"] for r in step_rows(out)] == list(range(1, total + 1))


# ------------------------------------------------------ 7. read-only or full checkpoint folder
def test_an_unwritable_output_folder_fails_at_start_up(synthetic_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointWriteError, match="cannot create .*a_file/run/checkpoints"):
        trainer(synthetic_root, blocker / "run")


def test_a_full_disk_is_reported_at_start_up_and_at_a_failed_save(synthetic_root, tmp_path, monkeypatch):
    real = checkpoint_module.shutil.disk_usage
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(CheckpointWriteError, match=r"no space for a checkpoint on .*need ~\d+ MB, 0 MB free"):
        trainer(synthetic_root, tmp_path / "full")
    monkeypatch.undo()

    out = tmp_path / "run"
    t = trainer(synthetic_root, out, **{"train.max_steps": 3})
    saves = {"n": 0}
    original = checkpoint_module.save_checkpoint

    def fill_up(path, state):
        saves["n"] += 1
        if saves["n"] == 2:  # the disk fills up before the second checkpoint
            monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return original(path, state)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", fill_up)
    with pytest.raises(CheckpointWriteError, match=r"no space left on .*checkpoints \(need ~\d+ MB"):
        t.fit()
    assert [p.name for p in (out / "checkpoints").glob("ckpt_*.pt")] == ["ckpt_000001.pt"]  # intact
    assert not list((out / "checkpoints").glob(".tmp-*"))


# ------------------------------------------------------------------------------- 11. SIGTERM
def test_sigterm_saves_the_step_and_resume_finishes_bitwise(synthetic_root, tmp_path):
    straight = tmp_path / "straight"
    assert run_script(args(synthetic_root, straight, **{"train.checkpoint_every_steps": 0})).returncode == 0

    out = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args(synthetic_root, out, **{"train.checkpoint_every_steps": 0})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # wait for the first logged step
        path = out / "metrics.jsonl"
        if path.exists() and '"loss"' in path.read_text():
            break
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert time.time() - sent < 60  # one step and one checkpoint, not the rest of the run
    assert "SIGTERM: stopped after step" in stderr and "--resume" in stderr
    saved = sorted((out / "checkpoints").glob("ckpt_*.pt"))
    assert len(saved) == 1 and saved[0].name != f"ckpt_{2 * steps_per_epoch(synthetic_root):06d}.pt"

    resumed = run_script(["--resume", *args(synthetic_root, out, **{"train.checkpoint_every_steps": 0})])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    last = f"ckpt_{2 * steps_per_epoch(synthetic_root):06d}.pt"
    a, b = weights(straight / "checkpoints" / last), weights(out / "checkpoints" / last)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------- 13. directory in place of a clip
def test_a_directory_in_place_of_a_clip_is_named_and_nothing_regenerated(tmp_path):
    from clip4vla.data.synthetic import make_synthetic_dataset

    root = tmp_path / "syn"
    make_synthetic_dataset(root, num_clips=PRETRAIN_CLIPS, seed=3, workers=1, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "videos").iterdir()}
    (root / "videos" / "video3.mp4").unlink()
    (root / "videos" / "video3.mp4").mkdir()
    with pytest.raises(FileExistsError, match="video3.mp4 is not a file"):
        make_synthetic_dataset(root, num_clips=PRETRAIN_CLIPS, seed=3, workers=1, progress=False)
    (root / "videos" / "video3.mp4").rmdir()
    make_synthetic_dataset(root, num_clips=PRETRAIN_CLIPS, seed=3, workers=1, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (root / "videos").iterdir()}
    assert {n for n in after if after[n] != stamps.get(n)} == {"video3.mp4"}  # only the missing clip
    assert not [p for p in (root / "videos").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ 13. skips in the records
def test_skipped_samples_are_counted_in_the_log_and_the_final_json(synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "syn"
    shutil.copytree(synthetic_root, root)
    train_ids = [line.strip() for line in (root / "MSRVTT_train.9k.csv").read_text().splitlines()[1:3]]
    for vid in train_ids:
        (root / "videos" / f"{vid}.mp4").write_bytes(b"not a video")
    result = run_script(args(root, tmp_path / "run", **{"train.epochs": 1}))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["skipped"] == 2
    assert step_rows(tmp_path / "run")[-1]["skipped"] == 2
