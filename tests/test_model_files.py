"""One model file: export, and load_model from every kind of file a model can start from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from clip4vla import load_model
from clip4vla.config import ModelConfig
from clip4vla.models.checkpoints import export_model, read_model_file
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.factory import build_model
from clip4vla.models.loading import CheckpointError
from clip4vla.models.preprocessing import Preprocessing
from legacy_files import legacy_model_pt

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PRE = Preprocessing(max_words=24, max_frames=3, max_segments=2, frontend="reference", audio_type=0.5)


@pytest.fixture(scope="module")
def micro() -> CLIP4VLA:
    torch.manual_seed(0)
    return CLIP4VLA.from_config(CLIPConfig.micro())


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_export_round_trips_weights_architecture_and_preprocessing(micro, tmp_path):
    path = export_model(micro, tmp_path / "model", PRE, task="test", step=7)
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for source in (path, path / "model.safetensors"):  # the folder, or its weights file
        model = load_model(source)
        assert isinstance(model, CLIP4VLA) and not model.training
        assert model.clip.config == CLIPConfig.micro() and model.preprocessing == PRE
        same_weights(micro, model)
        assert read_model_file(source).extra == {"task": "test", "step": 7}
    # everything in the folder is plain data: JSON records, tensors read without any pickle
    assert json.loads((path / "config.json").read_text())["preprocessing"]["audio_type"] == 0.5
    # clip4vla 0.2's one-file model.pt stays readable
    legacy = load_model(legacy_model_pt(micro, tmp_path / "model.pt", PRE, task="test", step=7))
    assert legacy.preprocessing == PRE and read_model_file(tmp_path / "model.pt").extra == {"task": "test", "step": 7}
    same_weights(micro, legacy)


def test_openai_file_gets_its_audio_encoder_from_the_vision_tower():
    model = load_model(FIXTURES / "clip_tiny_vit_jit.pt")  # a TorchScript archive like ViT-B-32.pt
    assert torch.equal(model.audio.visual.conv1.weight, model.clip.visual.conv1.weight)
    assert model.audio.use_type_token and model.preprocessing == Preprocessing(image_size=32)  # frames at its 32 px
    plain = load_model(FIXTURES / "clip_tiny_vit.pt", activation="quick_gelu")  # and a plain state dict (declared)
    assert plain.clip.config == model.clip.config


def test_released_checkpoint_is_converted(micro, tmp_path, caplog):
    """REF keys: clip.* with 3 extra vocab rows, audio.visual.* with control_embedding, cross.* heads."""
    from clip4vla.models.fusion import FusionHead

    torch.manual_seed(1)
    head = FusionHead.from_clip(micro.clip, "l2l", layers=2)
    ref = {f"clip.{k}": v.clone() for k, v in micro.clip.state_dict().items()}
    ref["clip.token_embedding.weight"] = torch.cat([ref["clip.token_embedding.weight"], torch.randn(3, 64)])
    for k, v in micro.audio.visual.state_dict().items():
        ref[f"audio.visual.{k}"] = v.clone()
    ref["audio.visual.control_embedding"] = micro.audio.type_embedding.detach().clone()
    ref.update({f"cross.{k}": v.clone() for k, v in head.fusion.state_dict().items()})
    ref.update({f"similarity_dense.{k}": v.clone() for k, v in head.similarity_dense.state_dict().items()})
    ref["cls_linear.1.weight"] = torch.zeros(50, 64)  # a classification head we do not convert
    torch.save({f"module.{k}": v for k, v in ref.items()}, tmp_path / "ref.pt")  # saved from DDP
    with caplog.at_level(logging.WARNING):
        model = load_model(tmp_path / "ref.pt")
    assert set(model.heads) == {"fusion"} and model.heads["fusion"].mode == "l2l"
    same_weights(head, model.heads["fusion"])
    del model.heads["fusion"]
    same_weights(micro, model)
    assert "cls_linear" in caplog.text  # heads not converted, said so


def test_trainer_checkpoint_loads(micro, tmp_path):
    from clip4vla.files import save_checkpoint
    from clip4vla.models.checkpoints import model_record

    state = {"model": micro.state_dict(), "step": 3, "optimizer": {}, **model_record(micro, PRE)}
    save_checkpoint(tmp_path / "ckpt_000003.pt", state)
    model = load_model(tmp_path / "ckpt_000003.pt")
    same_weights(micro, model)
    assert model.preprocessing == PRE


def test_init_from_starts_a_run_from_any_file(micro, tmp_path):
    path = export_model(micro, tmp_path / "model", PRE)
    model = build_model(ModelConfig(init_from=str(path), train_clip=True))
    assert model.training
    same_weights(micro, model)
    # the file decides the architecture; a config that says otherwise is an error naming both
    with pytest.raises(CheckpointError, match=r"model.arch=tiny but the file holds a micro model"):
        build_model(ModelConfig(init_from=str(path), arch="tiny"))
    with pytest.raises(CheckpointError, match="audio_type_token=True, the config asks for False"):
        build_model(ModelConfig(init_from=str(path), audio_type_token=False))
    with pytest.raises(CheckpointError, match="already has a trained audio encoder"):
        build_model(ModelConfig(init_from=str(path), audio_init="scratch"))
    # an OpenAI file may start a scratch audio encoder
    scratch = build_model(ModelConfig(init_from=str(FIXTURES / "clip_tiny_vit.pt"), audio_init="scratch", activation="quick_gelu"))
    assert not torch.equal(scratch.audio.visual.conv1.weight, scratch.clip.visual.conv1.weight)


def test_bad_files_are_clear_errors(micro, tmp_path):
    good = legacy_model_pt(micro, tmp_path / "model.pt", PRE)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt: cannot read checkpoint"):
        load_model(truncated)
    with pytest.raises(CheckpointError, match="nope.pt: model file or folder not found"):
        load_model(tmp_path / "nope.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a model file clip4vla knows.*weight"):
        load_model(tmp_path / "other.pt")
    state = torch.load(good, weights_only=True)
    state["state_dict"]["audio.type_embedding"] = torch.zeros(3, 64)
    torch.save(state, tmp_path / "wrong_shape.pt")
    with pytest.raises(CheckpointError, match=r"wrong_shape.pt.*audio.type_embedding: checkpoint \(3, 64\)"):
        load_model(tmp_path / "wrong_shape.pt")
    state = torch.load(good, weights_only=True)
    state["format_version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(tmp_path / "future.pt")



def test_every_load_error_names_the_file_and_what_is_wrong(micro, tmp_path):
    """Keys a .safetensors lacks or adds, integer weights, an impossible preprocessing record."""
    from safetensors.torch import save_file

    clip = {k: v.contiguous() for k, v in micro.clip.state_dict().items()}
    odd = {k: v for k, v in clip.items() if k != "ln_final.bias"} | {"extra.weight": torch.zeros(2)}
    save_file(odd, tmp_path / "open_clip_model.safetensors")
    with pytest.raises(CheckpointError, match=r"open_clip_model.safetensors: .*missing keys \[ln_final.bias\]; "
                                              r"unexpected keys \[extra.weight\]"):
        load_model(tmp_path / "open_clip_model.safetensors", activation="gelu")
    torch.save(clip | {"visual.proj": clip["visual.proj"].to(torch.int32)}, tmp_path / "int32.pt")
    with pytest.raises(CheckpointError, match=r"int32.pt: .*visual.proj: checkpoint torch.int32, model torch.float32"):
        load_model(tmp_path / "int32.pt", activation="gelu")
    state = torch.load(legacy_model_pt(micro, tmp_path / "model.pt", PRE), weights_only=True)
    state["state_dict"]["clip.visual.proj"] = state["state_dict"]["clip.visual.proj"].to(torch.int32)
    torch.save(state, tmp_path / "int32_export.pt")
    with pytest.raises(CheckpointError, match=r"int32_export.pt: .*clip.visual.proj: checkpoint torch.int32"):
        load_model(tmp_path / "int32_export.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    state["preprocessing"]["max_frames"] = -3
    torch.save(state, tmp_path / "frames.pt")
    with pytest.raises(CheckpointError, match=r"frames.pt: preprocessing max_frames=-3: expected a whole number"):
        load_model(tmp_path / "frames.pt")

def test_token_level_outputs_keep_state_dict_keys_and_global_values(micro):
    """Per-token text features from one pass; the global feature is unchanged."""
    tokens = torch.zeros(2, 10, dtype=torch.long)
    tokens[:, 0], tokens[0, 1:4], tokens[0, 4], tokens[1, 1:7], tokens[1, 7] = 49406, 320, 49407, 500, 49407
    micro.eval()
    with torch.no_grad():
        per_token, global_ = micro.encode_text_tokens(tokens)
        assert per_token.shape == (2, 10, 64)
        assert torch.allclose(global_, micro.encode_text(tokens), atol=1e-6)
        assert torch.allclose(per_token[0, 4], global_[0], atol=1e-6)  # the EOT token is the global one
        frames = torch.randn(3, 3, 224, 224)
        hidden = micro.clip.visual.forward_features(micro.clip.visual.embed_patches(frames))
        assert hidden.shape == (3, 50, 64)
        assert torch.allclose(micro.clip.visual.forward_head(hidden), micro.clip.encode_image(frames), atol=1e-6)
