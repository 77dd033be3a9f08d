"""FSDP's sharded checkpoints (``clip4vla.train.sharded_checkpoint``) as files: written in one
process here (DCP needs no process group for that); tests/test_fsdp.py runs them on 2 ranks.

What is checked: a round trip keeps weights and only the moments the run had; the folder takes
its name only when complete (a killed write is a hidden staging folder, removed at start); a
missing or truncated shard and a ``.metadata`` that would run code are refused naming the file,
and resume falls back past them; old folders rotate like files.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from clip4vla.models.loading import CheckpointError
from clip4vla.train.checkpoint import CheckpointManager
from clip4vla.models.sharded_reader import read_sharded_model, read_trainer_state
from clip4vla.train.sharded_checkpoint import load_sharded, sharded_state


def trained_pair(seed: int = 0) -> tuple[nn.ModuleDict, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    trained = nn.ModuleDict({"model": nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)}),
                             "loss": nn.Linear(1, 1)})
    return trained, torch.optim.AdamW(trained.parameters(), lr=0.1)


def one_step(trained: nn.ModuleDict, optimizer: torch.optim.Optimizer) -> None:
    trained["model"]["a"](torch.randn(3, 4)).sum().backward()  # b and the loss get no gradient
    optimizer.step()
    optimizer.zero_grad()


def save(manager: CheckpointManager, step: int, trained: nn.ModuleDict, optimizer: torch.optim.Optimizer) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that it runs without a process group
        return manager.save_sharded(step, {**sharded_state(trained, optimizer), "step": step, "config": {}},
                                    is_main=True, device=torch.device("cpu"))


def test_round_trip_keeps_weights_and_only_the_moments_the_run_had(tmp_path):
    manager = CheckpointManager(tmp_path)
    trained, optimizer = trained_pair()
    one_step(trained, optimizer)
    folder = save(manager, 1, trained, optimizer)
    assert folder.name == "ckpt_000001" and {p.name for p in folder.iterdir()} == {".metadata", "__0_0.distcp",
                                                                                   "trainer.pt"}
    assert not list(tmp_path.glob(".tmp-*"))
    head = read_trainer_state(folder)
    assert head["step"] == 1 and head["sharded"] and "weights" not in head and "optimizer_state" not in head
    fresh, fresh_optimizer = trained_pair(seed=1)  # other random weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_sharded(folder, fresh, fresh_optimizer, head["optimizer_groups"])
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    # moments for a's weight and bias only: b never had a gradient, so it gets no made-up step count
    assert len(fresh_optimizer.state) == len(optimizer.state) == 2
    for p, q in zip(trained.parameters(), fresh.parameters()):
        for key, value in optimizer.state.get(p, {}).items():
            assert torch.equal(value, fresh_optimizer.state[q][key]), key
    # the model's full weights, read without the optimiser (what tests and users inspect)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = read_sharded_model(folder)
    assert weights.keys() == trained["model"].state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in trained["model"].state_dict().items())


def test_missing_or_truncated_shards_and_foreign_metadata_are_refused_and_resume_falls_back(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=None)
    trained, optimizer = trained_pair()
    for step in (1, 2, 3, 4):
        one_step(trained, optimizer)
        save(manager, step, trained, optimizer)
    assert [s for s, _ in manager.checkpoints()] == [1, 2, 3, 4]
    (tmp_path / "ckpt_000004" / "__0_0.distcp").unlink()
    shard = tmp_path / "ckpt_000003" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-10])
    marker = tmp_path / "ran"

    class Attack:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "ckpt_000002" / ".metadata").write_bytes(pickle.dumps(Attack()))
    with pytest.raises(CheckpointError, match="shard __0_0.distcp is missing"):
        read_trainer_state(tmp_path / "ckpt_000004")
    with pytest.raises(CheckpointError, match=r"truncated \(\d+ of \d+ bytes\)"):
        read_trainer_state(tmp_path / "ckpt_000003")
    with pytest.raises(CheckpointError, match="posix.system is not part of a checkpoint's metadata"):
        read_trainer_state(tmp_path / "ckpt_000002")
    assert not marker.exists()  # the pickle's code never ran
    with pytest.warns(RuntimeWarning, match="falling back to the previous checkpoint"):
        state, path = manager.load_latest()
    assert path.name == "ckpt_000001" and state["step"] == 1 and state["sharded_path"] == str(path)


def test_a_killed_write_is_removed_at_start_and_folders_rotate(tmp_path):
    staging = tmp_path / ".tmp-ckpt_000003"  # a save killed before its rename: never a checkpoint
    staging.mkdir()
    (staging / "__0_0.distcp").write_bytes(b"partial")
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert not staging.exists() and manager.checkpoints() == []
    trained, optimizer = trained_pair()
    for step in (1, 2, 3):
        one_step(trained, optimizer)
        save(manager, step, trained, optimizer)
    assert [p.name for _, p in manager.checkpoints()] == ["ckpt_000002", "ckpt_000003"]
    assert not (tmp_path / "ckpt_000001").exists()
