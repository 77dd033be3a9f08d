"""Atomic checkpoints, rotation, fallback past a corrupt newest file, weights_only RNG round-trip."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from clip4vla.train import checkpoint as ckpt
from clip4vla.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from clip4vla.train.optim import WarmupCosine, build_optimizer


def training_state(step: int) -> dict:
    torch.manual_seed(step)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    model = nn.ModuleDict({"audio": model, "head": nn.Linear(3, 2)})
    opt = build_optimizer(model, lr=1e-3, coef_lr=0.1)
    sched = WarmupCosine(opt, total_steps=10)
    model["head"](model["audio"](torch.randn(5, 4))).sum().backward()
    opt.step()
    sched.step()
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "epoch": 0,
        "rng": capture_rng_state(),
        "config": {"train": {"lr": 1e-3, "betas": (0.9, 0.98), "name": "run"}, "seed": None},
    }


def ckpt_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_weights_only_round_trip_of_full_training_state(tmp_path):
    state = training_state(7)
    path = save_checkpoint(tmp_path / "a.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["scheduler"] == state["scheduler"]
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], exp_avg)
    # and it restores into fresh objects
    model = nn.ModuleDict({"audio": nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), "head": nn.Linear(3, 2)})
    model.load_state_dict(loaded["model"])
    opt = build_optimizer(model, lr=1e-3, coef_lr=0.1)
    opt.load_state_dict(loaded["optimizer"])
    WarmupCosine(opt, total_steps=10).load_state_dict(loaded["scheduler"])


def test_rng_state_survives_weights_only_and_restores_all_generators(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)  # move away from the seeded states
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(3), np.random.randn(), torch.rand(4))

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.rand(3), np.random.randn(), torch.rand(4))
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert torch.equal(got[3], expected[3])


def test_restore_rng_state_rejects_malformed():
    with pytest.raises(CheckpointError, match="malformed RNG state"):
        restore_rng_state({"python": (3, (1, 2), None)})


def test_unsafe_types_are_refused_at_save_time_with_the_key(tmp_path):
    with pytest.raises(TypeError, match=r"extra\.arr.*numpy.ndarray.*from_numpy"):
        save_checkpoint(tmp_path / "x.pt", {"extra": {"arr": np.zeros(3)}})
    with pytest.raises(TypeError, match=r"object"):
        save_checkpoint(tmp_path / "x.pt", {"obj": object()})
    assert ckpt_files(tmp_path) == []  # nothing, not even a temp file


def test_crash_during_write_keeps_previous_and_leaves_no_checkpoint_named_file(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(100, {"step": 100, "w": torch.ones(1000)})
    before = (tmp_path / "ckpt_000100.pt").read_bytes()

    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes of a zip archive")
        f.flush()
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(ckpt.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(200, {"step": 200, "w": torch.zeros(1000)})
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    assert ckpt_files(tmp_path) == ["ckpt_000100.pt"]
    assert (tmp_path / "ckpt_000100.pt").read_bytes() == before
    state, path = mgr.load_latest()
    assert state["step"] == 100 and path.name == "ckpt_000100.pt"


def test_killed_writer_leftover_is_ignored_and_cleaned(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"step": 1})
    # what a SIGKILL between write and rename leaves behind
    leftover = tmp_path / ".tmp-ckpt_000002.pt.abc123"
    leftover.write_bytes(b"PK\x03\x04 truncated")
    state, path = mgr.load_latest()
    assert state["step"] == 1
    CheckpointManager(tmp_path)  # a restarted run removes the leftover
    assert ckpt_files(tmp_path) == ["ckpt_000001.pt"]


def test_keep_last_pruning_and_listing_order(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 1000000, 20, 300):  # saved out of order, and one past 6 digits
        mgr.save(step, {"step": step})
    assert [s for s, _ in mgr.checkpoints()] == [300, 1000000]
    assert ckpt_files(tmp_path) == ["ckpt_000300.pt", "ckpt_1000000.pt"]
    assert mgr.load_latest()[0]["step"] == 1000000

    keep_all = CheckpointManager(tmp_path / "all", keep_last=None)
    for step in range(5):
        keep_all.save(step, {"step": step})
    assert len(keep_all.checkpoints()) == 5
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_truncated_newest_falls_back_to_previous_with_warning(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step in (10, 20, 30):
        mgr.save(step, {"step": step, "w": torch.randn(256)})
    newest = tmp_path / "ckpt_000030.pt"
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    with pytest.warns(RuntimeWarning, match="ckpt_000030.pt"):
        state, path = mgr.load_latest()
    assert state["step"] == 20 and path.name == "ckpt_000020.pt"


def test_all_corrupt_is_an_error_and_empty_dir_is_none(tmp_path):
    mgr = CheckpointManager(tmp_path)
    assert mgr.load_latest() is None
    (tmp_path / "ckpt_000001.pt").write_bytes(b"garbage")
    (tmp_path / "ckpt_000002.pt").write_bytes(b"")
    with pytest.warns(RuntimeWarning):
        with pytest.raises(CheckpointError, match=r"ckpt_000002\.pt.*\n.*ckpt_000001\.pt"):
            mgr.load_latest()


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    # a pickle with arbitrary objects is refused by weights_only loading
    torch.save({"cls": nn.Linear(1, 1)}, tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match="module.pt"):
        load_checkpoint(tmp_path / "module.pt")
