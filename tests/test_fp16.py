"""train.precision=fp16 (the mixed precision of a V100) on CPU: it trains, overflowing steps are
skipped and counted, its loss scaler resumes bitwise, and only a run that fp16 cannot hold stops.

fp16 autocast and ``torch.amp.GradScaler`` run on CPU too (slowly: ~5 s a micro step on 2 cores),
so the runs are a few steps of the micro model at 2 frames and 2 audio segments.
"""

from __future__ import annotations

import json
import logging
import math
import signal
from pathlib import Path

import pytest
import torch

from clip4vla.config import PretrainConfig, load_config
from clip4vla.train.loop import Fp16OverflowError, NonFiniteLossError, Stepper, Trainer, TrainingInterrupted
from clip4vla.train.pretrain import PretrainTask
from conftest import micro_pretrain_settings


def trainer(root: Path, out: Path, resume: bool = False, **extra: object) -> Trainer:
    settings = micro_pretrain_settings(root, out)
    settings.update({"optim.lr": 1e-3, "train.epochs": 2, "train.batch_size": 4, "train.keep_last": 20,
                     "train.precision": "fp16", "data.max_frames": 2, "audio.max_segments": 2})
    settings.update(extra)
    config = load_config(PretrainConfig, None, [f"{k}={v}" for k, v in settings.items()])
    return Trainer(config, PretrainTask, resume=resume)


def strict_rows(out: Path) -> list[dict]:
    """The training rows of metrics.jsonl, read as strict JSON (NaN or Infinity is a failure)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.jsonl holds {constant}")

    rows = [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def checkpoint(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"ckpt_{step:06d}.pt", map_location="cpu", weights_only=True)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def overflowing_scaler(run: Trainer, growth_interval: int = 2000) -> None:
    """Make step 1 overflow for sure (the default 2**16 already does, see the first test; 2**24 is far
    beyond), and the backoff bring the scale down to 2**8 in one step, where this run's gradients fit."""
    run.stepper.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, backoff_factor=2.0**-16,
                                              growth_interval=growth_interval)


def poison_loss(run: Trainer, monkeypatch, steps: set[int] | None, value: float) -> None:
    """Add ``value`` (inf or NaN) to the loss of ``steps`` (every step for None), as a forward overflow."""
    original = run.stepper.loss_module.forward

    def poisoned(*args, **kwargs):
        total, parts = original(*args, **kwargs)
        return (total + value, parts) if steps is None or run.stepper.step + 1 in steps else (total, parts)

    monkeypatch.setattr(run.stepper.loss_module, "forward", poisoned)


def test_an_fp16_run_trains_end_to_end(synthetic_root, tmp_path, caplog):
    out = tmp_path / "run"
    run = trainer(synthetic_root, out, **{"train.max_steps": 6})
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="clip4vla.train.loop"):
        result = run.fit()
    rows = strict_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in rows)
    # the default scale (2**16) overflows this model's first steps; they are skipped and counted
    taken = [r["grad_norm"] is not None for r in rows]
    assert [r["fp16_skipped"] for r in rows] == [sum(1 for t in taken[:i + 1] if not t) for i in range(6)]
    skipped = rows[-1]["fp16_skipped"]
    assert 0 < skipped < 6 and result["fp16_skipped"] == skipped
    assert f"fp16: the loss scaler skipped {skipped} of 6 optimiser steps" in caplog.text
    last = checkpoint(out, 6)
    assert not same(last["model"], start)  # it trained
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert last["scaler"]["skipped_steps"] == skipped and last["scaler"]["scale"] == rows[-1]["fp16_scale"]
    assert (out / "model" / "model.safetensors").is_file()


def test_overflowing_steps_are_skipped_counted_and_the_run_goes_on(synthetic_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run = trainer(synthetic_root, out, **{"train.max_steps": 4})
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    overflowing_scaler(run)  # step 1: the gradients overflow
    # step 3: the loss overflows (an inf term, whose gradients alone would be finite)
    poison_loss(run, monkeypatch, {3}, float("inf"))
    result = run.fit()

    rows = strict_rows(out)
    assert [r["grad_norm"] is None for r in rows] == [True, False, True, False]
    assert [r["loss"] is None for r in rows] == [False, False, True, False]
    assert [r["fp16_skipped"] for r in rows] == [1, 1, 2, 2]
    assert [r["fp16_scale"] for r in rows] == [2.0**8, 2.0**8, 2.0**-8, 2.0**-8]
    assert result["fp16_skipped"] == 2 and (out / "model" / "model.safetensors").is_file()
    # a skipped step leaves the weights and AdamW's state as they were; a taken one changes them
    ckpts = [checkpoint(out, step) for step in range(1, 5)]
    assert same(ckpts[0]["model"], start)
    assert not same(ckpts[1]["model"], ckpts[0]["model"])
    assert same(ckpts[2]["model"], ckpts[1]["model"])
    assert ckpts[2]["optimizer"]["state"][0]["step"] == ckpts[1]["optimizer"]["state"][0]["step"]
    assert not same(ckpts[3]["model"], ckpts[2]["model"])


def test_a_resumed_fp16_run_ends_bitwise_equal_to_a_straight_one(synthetic_root, tmp_path):
    """Stopped after step 2 (its checkpoint written, as every step's), resumed in a new Trainer:
    weights, AdamW, the scaler's scale and growth tracker, and the skip counter all continue."""
    steps = {"train.max_steps": 3}
    straight = tmp_path / "straight"
    run = trainer(synthetic_root, straight, **steps)
    overflowing_scaler(run, growth_interval=2)  # skip at 1; taken at 2 and 3, the scale doubles at 3
    run.fit()

    stopped = tmp_path / "stopped"
    run = trainer(synthetic_root, stopped, **steps)
    overflowing_scaler(run, growth_interval=2)
    original = run.stepper.train_step

    def stop_after_step_2(batches):
        metrics = original(batches)
        if run.step == 2:
            run.sigterm.signum = signal.SIGTERM  # what a scheduler's pre-emption does
        return metrics

    run.stepper.train_step = stop_after_step_2
    with pytest.raises(TrainingInterrupted):
        run.fit()
    assert checkpoint(stopped, 2)["scaler"] == {"scale": 2.0**8, "growth_factor": 2.0, "backoff_factor": 2.0**-16,
                                                "growth_interval": 2, "_growth_tracker": 1, "skipped_steps": 1,
                                                "stuck_steps": 0}
    # a fresh Trainer (its own default scaler): everything comes from the checkpoint of step 2
    trainer(synthetic_root, stopped, resume=True, **steps).fit()

    a, b = checkpoint(straight, 3), checkpoint(stopped, 3)
    assert same(a["model"], b["model"]) and same(a["loss"], b["loss"])
    for key in a["optimizer"]["state"]:
        assert same(a["optimizer"]["state"][key], b["optimizer"]["state"][key]), key
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] == 2.0**9 and a["scaler"]["skipped_steps"] == 1
    drop = lambda rows: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]  # noqa: E731
    assert drop(strict_rows(straight)) == drop(strict_rows(stopped))


def test_fp16_that_keeps_overflowing_at_the_floor_scale_stops_naming_the_step(synthetic_root, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(Stepper, "FP16_GIVE_UP", 2)  # 8 by default: 2 keeps the test short
    run = trainer(synthetic_root, out, **{"train.max_steps": 4})
    run.stepper.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # already at the floor
    poison_loss(run, monkeypatch, None, float("nan"))
    with pytest.raises(Fp16OverflowError, match=r"2 steps in a row up to step 2.*loss itself.*video\d+.*"
                                                r"fp16 cannot represent this run.*train.precision=bf16") as err:
        run.fit()
    assert isinstance(err.value, NonFiniteLossError)
    # step 1 was skipped and checkpointed (weights as they were); step 2 raised before its checkpoint
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt_*.pt")) == ["ckpt_000001.pt"]
    assert [r["fp16_skipped"] for r in strict_rows(out)] == [1]


def test_the_give_up_rule_counts_only_skips_in_a_row_at_the_floor_scale(synthetic_root, tmp_path):
    stepper = trainer(synthetic_root, tmp_path / "run", **{"train.max_steps": 1}).stepper
    give_up = Stepper.FP16_GIVE_UP
    for _ in range(3 * give_up):  # the scale coming down from 2**16: skips, never an error
        stepper.note_fp16_step(True, 2.0**10)
    for _ in range(give_up - 1):
        stepper.note_fp16_step(True, 1.0)
    stepper.note_fp16_step(False, 1.0)  # one step taken: the count starts again
    for _ in range(give_up - 1):
        stepper.note_fp16_step(True, 0.5)
    assert stepper.fp16_skipped == 3 * give_up + 2 * (give_up - 1)
    with pytest.raises(Fp16OverflowError, match=f"{give_up} steps in a row"):
        stepper.note_fp16_step(True, 0.25)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_without_fp16_a_non_finite_loss_is_still_an_error(precision, synthetic_root, tmp_path, monkeypatch):
    """fp32/bf16 have no loss scaler and no fp16 overflow: a NaN loss stops the run at once, as
    before (tests/test_pretrain.py checks the message and that no checkpoint is written)."""
    run = trainer(synthetic_root, tmp_path / "run", **{"train.precision": precision, "train.max_steps": 2})
    poison_loss(run, monkeypatch, None, float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 1") as err:
        run.fit()
    assert not isinstance(err.value, Fp16OverflowError)
