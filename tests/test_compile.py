"""``train.compile: true`` (issue 32): the towers' blocks compiled with torch.compile (inductor)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from clip4vla.config import ConfigError, PretrainConfig, load_config
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.train.loop import Trainer
from clip4vla.train.pretrain import PretrainTask
from conftest import micro_pretrain_settings


def test_no_tower_has_a_graph_break():
    """The compiler's own explanation: each tower's encode function is one graph."""
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.micro())
    tokens = torch.randint(1, 400, (2, 32))
    tokens[:, -1] = 49407
    images = torch.randn(3, 3, 224, 224)
    for name, fn, inputs in (("text", model.clip.encode_text, tokens), ("vision", model.clip.encode_image, images),
                             ("audio", lambda s: model.audio.encode_segments(s, "nb"), images)):
        explained = torch._dynamo.explain(fn)(inputs)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (name, explained.break_reasons)


def config(root, out, **more) -> PretrainConfig:
    settings = {**micro_pretrain_settings(root, out), "train.batch_size": 4, "train.max_steps": 2, "train.epochs": 5,
                "train.eval_every_steps": 2, "train.device": "cpu", "optim.lr": 2e-4, **more}
    return load_config(PretrainConfig, None, [f"{k}={v}" for k, v in settings.items()])


def test_a_compiled_run_trains_what_eager_trains(synthetic_root, tmp_path, caplog):
    caplog.set_level("INFO")
    Trainer(config(synthetic_root, tmp_path / "eager"), PretrainTask).fit()
    compiled = Trainer(config(synthetic_root, tmp_path / "compiled", **{"train.compile": True}), PretrainTask)
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in compiled.model.tower_blocks())
    compiled.fit()
    assert "compiling included" in caplog.text
    a = torch.load(tmp_path / "eager" / "checkpoints" / "ckpt_000002.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "compiled" / "checkpoints" / "ckpt_000002.pt", weights_only=True)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    rows = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
            for name in ("eager", "compiled")]
    assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[0]], rel=1e-5)


def test_no_compiler_is_an_error_at_start_up(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(PretrainTask, "datasets", lambda self: pytest.fail("data work before the check"))
    with pytest.raises(ConfigError, match="train.compile=true needs a C\\+\\+ compiler .* or set train.compile=false"):
        Trainer(config(synthetic_root, tmp_path / "run", **{"train.compile": True}), PretrainTask)
