"""open_clip's own models as the oracle: tiny random CLIPs made by ``open_clip.create_model``, saved in
open_clip's file formats, loaded through ``clip4vla.load_model`` / ``model.init_from``, must give
open_clip's image and text features (fp32, the tolerance of the OpenAI parity tests)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from clip4vla import load_model
from clip4vla.config import ModelConfig
from clip4vla.models.checkpoints import export_model
from clip4vla.models.clip import CLIP, CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.factory import build_model
from clip4vla.models.loading import CheckpointError
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.text import tokenize
from open_clip_models import OPEN_CLIP_MODELS, _config, open_clip_files, open_clip_hub_folder

open_clip = pytest.importorskip("open_clip")

ATOL = RTOL = 1e-5  # as tests/test_clip_parity.py: features, fp32


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    return open_clip_files(tmp_path_factory.mktemp("open_clip"))


def _inputs(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, resolution, resolution, generator=generator)
    tokens = tokenize(["a dog barks at a passing train", "rain on a tin roof", "someone explains a recipe"])
    return images, tokens


def _theirs(oc_model, images, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return oc_model.encode_image(images), oc_model.encode_text(tokens)


def _ours(model: CLIP4VLA, images, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.clip.encode_image(images), model.clip.encode_text(tokens)


@pytest.mark.parametrize("name", list(OPEN_CLIP_MODELS))
def test_open_clip_files_give_open_clip_features(files, name):
    path, oc_model = files[name]
    spec = OPEN_CLIP_MODELS[name]
    images, tokens = _inputs(spec["resolution"])
    image_ref, text_ref = _theirs(oc_model, images, tokens)

    model = load_model(path, activation=spec["activation"])
    assert model.clip.config.activation == spec["activation"]
    assert model.clip.config.image_resolution == spec["resolution"] == model.preprocessing.image_size
    image, text = _ours(model, images, tokens)
    torch.testing.assert_close(image, image_ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(text, text_ref, atol=ATOL, rtol=RTOL)

    # the training route (model.init_from) builds the same weights and activation
    built = build_model(ModelConfig(init_from=str(path), activation=spec["activation"])).eval()
    image, text = _ours(built, images, tokens)
    torch.testing.assert_close(image, image_ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(text, text_ref, atol=ATOL, rtol=RTOL)


def test_the_declared_activation_matters(files):
    """The GELU model loaded as QuickGELU: same keys, same shapes, different features."""
    path, oc_model = files["gelu"]
    images, tokens = _inputs(OPEN_CLIP_MODELS["gelu"]["resolution"])
    image_ref, text_ref = _theirs(oc_model, images, tokens)
    wrong = load_model(path, activation="quick_gelu")
    image, text = _ours(wrong, images, tokens)
    assert (image - image_ref).abs().max() > 1e-3 * image_ref.abs().max()
    assert (text - text_ref).abs().max() > 1e-3 * text_ref.abs().max()


def test_every_open_clip_format_holds_the_same_weights(files, tmp_path):
    """.safetensors (no pickle), open_clip_pytorch_model.bin and a state_dict() saved with torch.save."""
    from safetensors.torch import save_file

    _, oc_model = files["gelu"]
    state = {k: v.contiguous() for k, v in oc_model.state_dict().items()}
    save_file(state, tmp_path / "open_clip_model.safetensors")
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    torch.save(state, tmp_path / "state_dict.pt")
    loaded = [load_model(tmp_path / f, activation="gelu").clip.state_dict()  # the audio type rows are random
              for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "state_dict.pt")]
    for key in loaded[0]:
        assert torch.equal(loaded[0][key], loaded[1][key]) and torch.equal(loaded[0][key], loaded[2][key]), key


def test_the_activation_is_never_guessed(files):
    for name in ("gelu", "quick_gelu", "gelu_64px"):
        path, _ = files[name]
        with pytest.raises(CheckpointError, match=r"does not record its activation.*model\.activation: quick_gelu"):
            build_model(ModelConfig(init_from=str(path)))
        with pytest.raises(CheckpointError, match=str(path)):
            load_model(path)


def test_export_records_the_activation_and_every_loader_honours_it(files, tmp_path):
    path, oc_model = files["gelu"]
    model = build_model(ModelConfig(init_from=str(path), open_clip_model=None, activation="gelu"))
    out = export_model(model, tmp_path / "model", model.preprocessing)
    assert json.loads((out / "config.json").read_text())["architecture"]["clip"]["activation"] == "gelu"
    again = load_model(out)  # nothing declared: the file records it
    images, tokens = _inputs(OPEN_CLIP_MODELS["gelu"]["resolution"])
    torch.testing.assert_close(_ours(again, images, tokens)[0], _theirs(oc_model, images, tokens)[0],
                               atol=ATOL, rtol=RTOL)
    # the audio encoder (a copy of the vision tower) is built with the same activation
    assert isinstance(again.audio.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    with pytest.raises(CheckpointError, match="records activation gelu, but the config declares quick_gelu"):
        build_model(ModelConfig(init_from=str(out), activation="quick_gelu"))


def test_open_clip_model_names(files):
    path, _ = files["gelu"]
    with pytest.raises(CheckpointError, match="model.activation=quick_gelu contradicts model.open_clip_model=ViT-B-32"):
        build_model(ModelConfig(init_from=str(path), activation="quick_gelu", open_clip_model="ViT-B-32"))
    with pytest.raises(CheckpointError, match=r"not an open_clip ViT-B-32: embed_dim 32 \(the name says 512\)"):
        build_model(ModelConfig(init_from=str(path), open_clip_model="ViT-B-32"))
    with pytest.raises(CheckpointError, match="'RN50' is not one clip4vla loads"):
        build_model(ModelConfig(init_from=str(path), open_clip_model="RN50"))


def test_non_vit_and_unfit_backbones_are_refused_at_start_up(files, tmp_path):
    _, oc_model = files["gelu"]
    base = {k: v for k, v in oc_model.state_dict().items() if not k.startswith("visual.")}
    cases = {
        "resnet": ({"visual.conv1.weight": torch.zeros(8, 3, 3, 3), "visual.layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1)},
                   "ResNet CLIP"),
        "convnext": ({"visual.trunk.stem.0.weight": torch.zeros(8, 3, 4, 4), "visual.head.proj.weight": torch.zeros(32, 8)},
                     "timm vision tower"),
        "eva": ({"visual.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "visual.blocks.0.norm1.weight": torch.zeros(8)},
                "EVA"),
    }
    for name, (visual, reason) in cases.items():
        torch.save({**base, **visual}, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=f"{tmp_path / name}.pt: .*{reason}"):
            build_model(ModelConfig(init_from=str(tmp_path / f"{name}.pt"), activation="gelu"))
    # a text context other than 77
    short = dict(oc_model.state_dict())
    short["positional_embedding"] = short["positional_embedding"][:32].clone()
    torch.save(short, tmp_path / "ctx32.pt")
    with pytest.raises(CheckpointError, match="ctx32.pt: the text tower has 32 positions"):
        build_model(ModelConfig(init_from=str(tmp_path / "ctx32.pt"), activation="gelu"))
    # a recorded resolution that is not a whole number of patches
    micro = CLIP4VLA.from_config(CLIPConfig.micro())
    odd = export_model(micro, tmp_path / "odd", Preprocessing())
    record = json.loads((odd / "config.json").read_text())
    record["architecture"]["clip"]["image_resolution"] = 200
    (odd / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="odd: image resolution 200 is not a whole number of 32-px patches"):
        load_model(odd)


def test_openai_archives_record_their_activation():
    """OpenAI's TorchScript archives name QuickGELU in their module classes: no declaration needed,
    and a contradicting one is an error."""
    archive = Path(__file__).parent / "fixtures" / "clip_tiny_vit_jit.pt"
    assert load_model(archive).clip.config.activation == "quick_gelu"
    with pytest.raises(CheckpointError, match="records activation quick_gelu, but the config declares gelu"):
        build_model(ModelConfig(init_from=str(archive), activation="gelu"))


def test_audio_positions_are_resampled_once_from_a_non_224_tower(files):
    path, _ = files["gelu_64px"]
    model = load_model(path, activation="gelu")
    vision, audio = model.clip.visual, model.audio.visual
    assert vision.input_resolution == 64 and audio.input_resolution == 224
    assert vision.positional_embedding.shape[0] == 1 + 4 * 4 and audio.positional_embedding.shape[0] == 1 + 14 * 14 + 1
    assert torch.equal(audio.positional_embedding[0], vision.positional_embedding[0])  # CLS kept
    # the resampled grid spans the same range of values (bicubic, no new extremes beyond overshoot)
    grid = audio.positional_embedding[1:-1]
    assert grid.abs().max() <= 1.5 * vision.positional_embedding[1:].abs().max()
    assert torch.equal(audio.conv1.weight, vision.conv1.weight)
    with torch.no_grad():
        _, pooled = model.encode_audio(torch.randn(1, 2, 3, 224, 224), torch.ones(1, 2, dtype=torch.bool), "nb")
    assert pooled.shape == (1, model.clip.config.embed_dim) and torch.isfinite(pooled).all()


def test_a_config_arch_compares_shapes_not_the_activation(tmp_path):
    cfg = dataclasses.replace(CLIPConfig.micro(), activation="gelu")
    torch.save(CLIP(cfg).state_dict(), tmp_path / "micro.pt")
    model = build_model(ModelConfig(init_from=str(tmp_path / "micro.pt"), arch="micro", activation="gelu"))
    assert model.clip.config == cfg


def test_open_clip_training_checkpoints_and_damaged_safetensors(files, tmp_path):
    path, oc_model = files["gelu"]
    state = {f"module.{k}": v for k, v in oc_model.state_dict().items()}  # saved from DDP, as open_clip's trainer does
    torch.save({"epoch": 3, "name": "clip4vla-test-gelu", "state_dict": state}, tmp_path / "epoch_3.pt")
    images, tokens = _inputs(224)
    model = load_model(tmp_path / "epoch_3.pt", activation="gelu")
    torch.testing.assert_close(_ours(model, images, tokens)[1], _theirs(oc_model, images, tokens)[1],
                               atol=ATOL, rtol=RTOL)
    cut = tmp_path / "open_clip_model.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{cut}: cannot read safetensors file"):
        load_model(cut, activation="gelu")


def test_a_hub_folder_records_the_activation_in_open_clip_config_json(files, tmp_path):
    """open_clip publishes open_clip_config.json beside its weights: its model_cfg decides (quick_gelu
    flag), and must describe the file's tensors."""
    import json
    import shutil

    from open_clip_models import _config

    path, oc_model = files["gelu"]
    hub = tmp_path / "hub"
    hub.mkdir()
    shutil.copy(path, hub / path.name)
    model_cfg = _config(OPEN_CLIP_MODELS["gelu"])
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    images, tokens = _inputs(224)
    model = load_model(hub / path.name)  # nothing declared
    assert model.clip.config.activation == "gelu"
    torch.testing.assert_close(_ours(model, images, tokens)[0], _theirs(oc_model, images, tokens)[0],
                               atol=ATOL, rtol=RTOL)
    with pytest.raises(CheckpointError, match="records activation gelu, but the config declares quick_gelu"):
        load_model(hub / path.name, activation="quick_gelu")
    odd = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "image_size": 232}}
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": odd}))
    with pytest.raises(CheckpointError, match="says 232-px images, which are not a whole number of 32-px patches"):
        build_model(ModelConfig(init_from=str(hub / path.name)))
    wide = {**model_cfg, "embed_dim": 512}
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": wide}))
    with pytest.raises(CheckpointError, match=r"do not fit .*embed_dim 32 \(open_clip_config.json says 512\)"):
        load_model(hub / path.name, activation="gelu")


def _narrow_heads_config() -> dict:
    """The tiny GELU model with 32-wide heads in both towers (2 heads of the 64-wide blocks)."""
    model_cfg = _config(OPEN_CLIP_MODELS["gelu"])
    model_cfg["vision_cfg"]["head_width"] = 32
    model_cfg["text_cfg"]["heads"] = 2
    return model_cfg


def test_heads_that_are_not_64_wide_load_from_a_hub_folder_that_records_them(tmp_path):
    """No tensor holds the number of heads: open_clip_config.json does (head_width, text heads)."""
    path, oc_model = open_clip_hub_folder(tmp_path, "heads32", _narrow_heads_config())
    images, tokens = _inputs(224)
    image_ref, text_ref = _theirs(oc_model, images, tokens)
    for model in (load_model(path), build_model(ModelConfig(init_from=str(path))).eval()):
        assert (model.clip.config.vision_heads, model.clip.config.transformer_heads) == (2, 2)
        assert model.audio.visual.config.heads == 2  # the audio encoder is a copy of the vision tower
        image, text = _ours(model, images, tokens)
        torch.testing.assert_close(image, image_ref, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(text, text_ref, atol=ATOL, rtol=RTOL)
    again = load_model(export_model(model, tmp_path / "model", model.preprocessing))  # the export records them
    torch.testing.assert_close(_ours(again, images, tokens)[0], image_ref, atol=ATOL, rtol=RTOL)


def test_a_head_layout_that_cannot_be_told_or_built_is_refused_naming_the_file(tmp_path):
    path, _ = open_clip_hub_folder(tmp_path, "heads32", _narrow_heads_config())
    config = path.parent / "open_clip_config.json"
    model_cfg = _narrow_heads_config()
    for section, key, value, named, message in (
        ("vision_cfg", "head_width", 48, path, "head width 48 does not divide the vision tower's width 64"),
        ("text_cfg", "heads", 3, path, "3 heads do not divide the text tower's width 64"),
        ("vision_cfg", "head_width", "wide", config, "vision_cfg head_width='wide': expected a whole number"),
        ("vision_cfg", "pool_type", "avg", config, "vision_cfg pool_type='avg': clip4vla's towers are OpenAI's layout"),
    ):
        config.write_text(json.dumps({"model_cfg": {**model_cfg, section: {**model_cfg[section], key: value}}}))
        with pytest.raises(CheckpointError, match=f"{named}: .*{message}"):
            load_model(path)
    # a plain state dict: 64-wide heads (OpenAI's and LAION's rule up to ViT-L), or refused when its
    # widths cannot be split so
    config.unlink()
    assert load_model(path, activation="gelu").clip.config.vision_heads == 1
    odd = dataclasses.replace(CLIPConfig.micro(), vision_width=96, vision_heads=3)
    torch.save(CLIP(odd).state_dict(), tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd.pt: the 96-wide vision tower cannot have 64-wide heads"):
        load_model(tmp_path / "odd.pt", activation="gelu")


def test_an_open_clip_training_checkpoint_tells_its_model_by_its_experiment_name(files, tmp_path, monkeypatch):
    """open_clip's trainer stores the run's name (by default ``<date>-model_<model>-lr_...``), not the
    model's: the model name is read out of it, and contradicting it is an error like any record."""
    from clip4vla.models.open_clip_format import OPEN_CLIP_VITS, experiment_model

    assert experiment_model("2024_01_01-12_00_00-model_ViT-B-32-quickgelu-lr_1e-05-b_256-j_8-p_amp_bf16") \
        == "ViT-B-32-quickgelu"
    assert experiment_model("my-run") is None
    path, oc_model = files["gelu"]
    shape = {k: v for k, v in dataclasses.asdict(load_model(path, activation="gelu").clip.config).items()
             if k != "activation"}
    monkeypatch.setitem(OPEN_CLIP_VITS, "ViT-T-32", shape)  # a named model of the tiny file's shapes

    def checkpoint(name: str) -> Path:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}" / "epoch_3.pt"
        out.parent.mkdir()
        torch.save({"epoch": 3, "name": name, "state_dict": {f"module.{k}": v for k, v in oc_model.state_dict().items()}},
                   out)
        return out

    images, tokens = _inputs(224)
    model = load_model(checkpoint("2024_01_01-12_00_00-model_ViT-T-32-lr_0.0005-b_256-j_8-p_amp"))  # nothing declared
    assert model.clip.config.activation == "gelu"
    torch.testing.assert_close(_ours(model, images, tokens)[0], _theirs(oc_model, images, tokens)[0],
                               atol=ATOL, rtol=RTOL)
    quick = checkpoint("2024_01_01-12_00_00-model_ViT-T-32-quickgelu-lr_0.0005-b_256-j_8-p_amp")
    for declared in ({"activation": "gelu"}, {"open_clip_model": "ViT-T-32"}):
        with pytest.raises(CheckpointError, match=rf"{quick}: .*stored model name ViT-T-32-quickgelu.*declares gelu"):
            load_model(quick, **declared)
    assert load_model(quick, activation="quick_gelu").clip.config.activation == "quick_gelu"
    # a name that is not open_clip's default format, or whose model clip4vla does not know: not a
    # misleading "ResNet ... do not load", but what to declare
    for name, said in (("my-run", "is not open_clip's default experiment name"),
                       ("2024_01_01-12_00_00-model_clip4vla-test-gelu-lr_0.0005-b_256-j_8-p_amp",
                        "model clip4vla-test-gelu is not an open_clip model whose activation clip4vla knows")):
        stored = checkpoint(name)
        with pytest.raises(CheckpointError, match=rf"{stored}: .*{said}.*model\.open_clip_model") as err:
            load_model(stored)
        assert "ResNet" not in str(err.value)
        assert load_model(stored, activation="gelu").clip.config.activation == "gelu"
