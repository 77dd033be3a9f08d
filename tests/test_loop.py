"""The one training loop: frozen towers encoded once, validation cadence, best-checkpoint selection."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clip4vla.config import ConfigError, PretrainConfig, load_config
from clip4vla.train.loop import Trainer
from clip4vla.train.pretrain import PretrainTask
from conftest import micro_pretrain_settings


def config(root, out, **extra) -> PretrainConfig:
    settings = micro_pretrain_settings(root, out)
    settings.update({"train.epochs": 2, "train.batch_size": 4, "optim.lr": 1e-3, "train.keep_last": 20})
    settings.update(extra)
    return load_config(PretrainConfig, None, [f"{k}={v}" for k, v in settings.items()])


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_frozen_towers_are_encoded_once_per_micro_batch(synthetic_root, micro_openai_clip, tmp_path):
    """Paper default (CLIP frozen) with accumulation: text/vision outside the re-encoding pass."""
    cfg = config(synthetic_root, tmp_path / "run", **{
        "model.init_from": micro_openai_clip, "model.train_clip": False, "model.arch": "null", "model.activation": "quick_gelu",
        "train.accum_steps": 2, "train.batch_size": 2, "train.max_steps": 1,
    })
    trainer = Trainer(cfg, PretrainTask)
    calls = {"vision": 0, "text": 0, "audio": 0}
    hooks = [
        trainer.model.clip.visual.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1)),
        trainer.model.clip.transformer.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1)),
        trainer.model.audio.visual.transformer.register_forward_hook(lambda *a: calls.__setitem__("audio", calls["audio"] + 1)),
    ]
    batches = next(trainer._epoch_micro_batches(0, 0))
    assert len(batches) == 2
    trainer.train_step(batches)
    for hook in hooks:
        hook.remove()
    # 2 micro-batches: frozen towers once each; the audio encoder twice each (cache, then with
    # autograd), clean and masked copy each time
    assert calls == {"vision": 2, "text": 2, "audio": 8}
    assert all(p.grad is None for p in trainer.model.clip.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.audio.parameters())


def test_validation_cadence_does_not_depend_on_checkpoints(synthetic_root, tmp_path):
    out = tmp_path / "run"
    steps_per_epoch = json.loads((synthetic_root / "synthetic_meta.json").read_text())["splits"]["train"] // 4
    # the paper config checkpoints every 500 steps; validation must still run at every epoch end
    Trainer(config(synthetic_root, out, **{"train.checkpoint_every_steps": 500}), PretrainTask).fit()
    val_steps = [r["step"] for r in rows(out) if "val/t2a/R1" in r]
    assert val_steps == [steps_per_epoch, 2 * steps_per_epoch]
    assert [p.name for p in sorted((out / "checkpoints").glob("ckpt_*.pt"))] == [f"ckpt_{2 * steps_per_epoch:06d}.pt"]
    out2 = tmp_path / "steps"
    Trainer(config(synthetic_root, out2, **{"train.eval_every_steps": 2, "train.max_steps": 5}), PretrainTask).fit()
    assert [r["step"] for r in rows(out2) if "val/t2a/R1" in r] == [2, 4, 5]


def test_best_checkpoint_is_chosen_on_validation_and_exported(synthetic_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    scores = iter([10.0, 30.0, 20.0])  # the second validation is the best

    def scripted(self, model, dataset, split):
        value = next(scores) if split == "val" else -1.0
        return {"split": split, "metrics": {"audio_R1": value}, "retrieval": {}, "chance": {}, "n_clips": 1}

    monkeypatch.setattr(PretrainTask, "evaluate", scripted)
    cfg = config(synthetic_root, out, **{"train.eval_every_steps": 2, "train.max_steps": 6, "train.export": "best"})
    trainer = Trainer(cfg, PretrainTask)
    trainer.fit()
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"] == {"step": 4, "metric": "audio_R1", "value": 30.0}
    exported = load_file(out / "model" / "model.safetensors")
    step4 = torch.load(out / "checkpoints" / "ckpt_000004.pt", weights_only=True)["model"]
    last = torch.load(out / "checkpoints" / "ckpt_000006.pt", weights_only=True)["model"]
    assert json.loads((out / "model" / "config.json").read_text())["training"]["weights"] == "best"
    assert all(torch.equal(exported[k], step4[k]) for k in step4)
    assert not all(torch.equal(step4[k], last[k]) for k in step4)  # the best is not simply the last

    # a metric the task never reports is refused at start-up (before any data work), not at the
    # first validation after an epoch of training
    monkeypatch.setattr(PretrainTask, "datasets", lambda self: pytest.fail("data work before the check"))
    with pytest.raises(ConfigError, match="select_metric='t2x/R1' is not a validation metric of pretrain"):
        Trainer(config(synthetic_root, tmp_path / "x", **{"train.select_metric": "t2x/R1", "train.max_steps": 1}),
                PretrainTask)
