"""Checkpoint loading: formats, dtype handling, and typed errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip4vla.models.clip import load_openai_clip
from clip4vla.models.loading import CheckpointError, is_torchscript_archive

FIXTURES = Path(__file__).parent / "fixtures"
PLAIN = FIXTURES / "clip_tiny_vit.pt"
ARCHIVE = FIXTURES / "clip_tiny_vit_jit.pt"


@pytest.fixture(scope="module")
def plain_state() -> dict:
    return torch.load(PLAIN, weights_only=True)


def _save(state, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_archive_detection():
    assert is_torchscript_archive(ARCHIVE)
    assert not is_torchscript_archive(PLAIN)


def test_loaded_model_is_fp32_eval_and_trainable(plain_state):
    model = load_openai_clip(ARCHIVE)
    assert not model.training
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad and p.device.type == "cpu" for p in params.values())
    # fp16 tensors of the archive are widened exactly: they equal the fp16-rounded golden weights
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(params[key], plain_state[key].half().float())
    # LayerNorms stay float32 in the archive, so they equal the plain file bit for bit
    assert torch.equal(params["ln_final.weight"], plain_state["ln_final.weight"])


def test_fp16_plain_file_and_archive_scalars(plain_state, tmp_path):
    state = {k: v.half() if k != "logit_scale" else v for k, v in plain_state.items()}
    # OpenAI's archive scalars are dropped, not loaded
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    model = load_openai_clip(_save(state, tmp_path / "fp16.pt"))
    assert torch.equal(model.visual.proj, plain_state["visual.proj"].half().float())
    assert model.visual.proj.dtype == torch.float32


def test_in_memory_state_dict_is_not_aliased(plain_state):
    model = load_openai_clip(plain_state)
    before = plain_state["visual.proj"].clone()
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    assert torch.equal(plain_state["visual.proj"], before)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_openai_clip(missing)


@pytest.mark.parametrize("source", [PLAIN, ARCHIVE], ids=["plain", "archive"])
def test_truncated_file(source, tmp_path):
    data = source.read_bytes()
    truncated = tmp_path / f"half_{source.name}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{truncated.name}: cannot read checkpoint"):
        load_openai_clip(truncated)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_openai_clip(path)


class _Payload:
    """Stands for any class a malicious pickle could name."""


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a file that needs arbitrary classes to unpickle is not executed."""
    path = _save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: cannot read checkpoint"):
        load_openai_clip(path)


def test_not_a_state_dict(tmp_path):
    path = _save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt: expected a state dict"):
        load_openai_clip(path)


def test_non_tensor_entry(plain_state, tmp_path):
    state = dict(plain_state, epoch=3)
    with pytest.raises(CheckpointError, match="'epoch' is a int"):
        load_openai_clip(_save(state, tmp_path / "mixed.pt"))


def test_other_architecture(tmp_path):
    path = _save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match=r"linear.pt: missing key 'visual.conv1.weight'"):
        load_openai_clip(path)


def test_resnet_clip_is_refused(plain_state):
    state = dict(plain_state)
    state["visual.layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(CheckpointError, match="ResNet"):
        load_openai_clip(state)


def test_missing_and_unexpected_keys(plain_state, tmp_path):
    state = dict(plain_state)
    del state["visual.ln_post.bias"]
    state["cross.embeddings.weight"] = torch.zeros(2, 2)
    path = _save(state, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError) as info:
        load_openai_clip(path)
    message = str(info.value)
    assert "keys.pt" in message
    assert "missing keys [visual.ln_post.bias]" in message
    assert "unexpected keys [cross.embeddings.weight]" in message


def test_wrong_shaped_tensor(plain_state, tmp_path):
    state = dict(plain_state)
    key = "transformer.resblocks.1.mlp.c_fc.weight"
    state[key] = torch.zeros(255, 64)
    path = _save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=rf"shape.pt: .*{key}: checkpoint \(255, 64\) vs model \(256, 64\)"):
        load_openai_clip(path)


def test_inconsistent_text_width(plain_state):
    state = dict(plain_state)
    state["text_projection"] = torch.zeros(65, 32)
    with pytest.raises(CheckpointError, match="text_projection has width 65"):
        load_openai_clip(state)


def test_bad_positional_table(plain_state):
    state = dict(plain_state)
    state["visual.positional_embedding"] = torch.zeros(18, 128)
    with pytest.raises(CheckpointError, match="visual.positional_embedding has 18 rows"):
        load_openai_clip(state)


def test_torchscript_archive_is_read_without_running_its_code(tmp_path, capfd):
    """A crafted archive whose __setstate__ runs at torch.jit.load: reading it must not run it."""
    import warnings
    from typing import Tuple

    from clip4vla.models.loading import read_state_dict

    class Child(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

        @torch.jit.export
        def __getstate__(self) -> Tuple[torch.Tensor, bool]:
            return (self.weight, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
            print("ARCHIVE CODE RAN")
            self.weight = state[0]
            self.training = state[1]

    class Top(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Parameter(torch.full((3,), 2.0))
            self.child = Child()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.child(x)

    path = tmp_path / "crafted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Top()).save(str(path))
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))  # what loading with torch.jit would do
    assert "ARCHIVE CODE RAN" in capfd.readouterr().out
    state = read_state_dict(path)
    assert "ARCHIVE CODE RAN" not in capfd.readouterr().out
    assert torch.equal(state["proj"], torch.full((3,), 2.0))
