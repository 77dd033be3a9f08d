"""Bring your own CLIP (issue 20): a micro pre-training run and a retrieval fine-tune start from each
open_clip-made file and from a small non-224 OpenAI-format file, through the scripts, and finish;
the LAION ViT-B/16 config runs on the format twins. Frames follow the model's resolution, decided
before any data is read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from clip4vla import load_model
from clip4vla.config import ModelConfig
from clip4vla.data.synthetic_formats import write_corpus_format
from clip4vla.models.audio import AUDIO_RESOLUTION
from clip4vla.models.clip import CLIP, CLIPConfig
from clip4vla.models.factory import input_image_size, read_init_file
from clip4vla.models.open_clip_format import OPEN_CLIP_VITS, AUDIO_RESOLUTION as FORMAT_AUDIO_RESOLUTION
from conftest import PRETRAIN_CLIPS
from open_clip_models import OPEN_CLIP_MODELS, open_clip_files
from script_checks import load_script, paper_corpora_settings

pytest.importorskip("open_clip")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def start_files(tmp_path_factory) -> dict[str, tuple[Path, str, int]]:
    """``{name: (file, activation, resolution)}``: the three open_clip-made files and a 48-px
    OpenAI-format state dict (16-px patches)."""
    folder = tmp_path_factory.mktemp("backbones")
    files = {name: (path, OPEN_CLIP_MODELS[name]["activation"], OPEN_CLIP_MODELS[name]["resolution"])
             for name, (path, _) in open_clip_files(folder).items()}
    torch.manual_seed(0)
    small = dataclasses.replace(CLIPConfig.micro(), image_resolution=48, vision_patch_size=16)
    torch.save(CLIP(small).state_dict(), folder / "openai_48px.pt")
    files["openai_48px"] = (folder / "openai_48px.pt", "quick_gelu", 48)
    return files


def _run(script: str, settings: dict[str, object], capsys) -> dict:
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    capsys.readouterr()
    assert load_script(script).main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_audio_segment_side_is_the_front_ends():
    from clip4vla.audio.segments import SEGMENT_LENGTH

    assert AUDIO_RESOLUTION == FORMAT_AUDIO_RESOLUTION == SEGMENT_LENGTH


def test_frames_follow_the_model_before_any_data_is_read(start_files):
    for path, activation, resolution in start_files.values():
        config = ModelConfig(init_from=str(path), activation=activation)
        assert input_image_size(config, read_init_file(config)) == resolution
    assert input_image_size(ModelConfig(), None) == 224
    # the real open_clip names promise shapes: ViT-L-14-336 takes 336-px frames
    assert OPEN_CLIP_VITS["ViT-L-14-336"]["image_resolution"] == 336


@pytest.mark.parametrize("name", ["quick_gelu", "gelu", "gelu_64px", "openai_48px"])
def test_pretraining_and_retrieval_fine_tuning_start_from_the_file(start_files, synthetic_root, tmp_path, capsys, name):
    path, activation, resolution = start_files[name]
    common = {
        "model.init_from": path, "model.arch": "null", "model.activation": activation,
        "data.synthetic.root": synthetic_root, "data.synthetic.clips": PRETRAIN_CLIPS,
        "data.max_frames": 2, "audio.max_segments": 2, "data.num_workers": 0, "data.cache_decoded": "false",
        "train.batch_size": 4, "train.max_steps": 1, "train.device": "cpu", "train.precision": "fp32",
    }
    summary = _run("pretrain", {**common, "train.output_dir": tmp_path / "pretrain"}, capsys)
    assert summary["split"] == "test" and {"t2a", "v2a", "t2v"} <= set(summary)
    pretrained = load_model(tmp_path / "pretrain" / "model")  # nothing declared: the export records it
    assert pretrained.clip.config.activation == activation
    assert pretrained.preprocessing.image_size == resolution == pretrained.clip.config.image_resolution

    summary = _run("finetune_retrieval", {**common, "data.val_split": "null", "train.epochs": 1,
                                          "train.output_dir": tmp_path / "retrieval"}, capsys)
    assert summary
    tuned = load_model(tmp_path / "retrieval" / "model")
    assert tuned.clip.config.activation == activation and tuned.preprocessing.image_size == resolution


def test_laion_b16_config_runs_on_the_format_twins(start_files, synthetic_root, tmp_path, capsys):
    """configs/pretrain_laion_b16.yaml as a user runs it, with a tiny GELU open_clip file in place of
    the LAION ViT-B/16 (its open_clip_model name is set to null: the tiny file is not a ViT-B-16)."""
    twins = tmp_path / "twins"
    for fmt in ("howto100m", "audioset", "msrvtt"):
        write_corpus_format(synthetic_root, fmt, twins / fmt, prepared=True)
    path, _, _ = start_files["gelu"]
    settings = {
        "model.init_from": path, "model.open_clip_model": "null",
        **paper_corpora_settings(twins, twins / "howto100m" / "caption.json"),
        "data.num_workers": 0, "data.max_frames": 2, "audio.max_segments": 2,
        "train.batch_size": 4, "train.accum_steps": 2, "train.max_steps": 1, "train.eval_every_steps": 1,
        "train.precision": "fp32", "train.device": "cpu", "train.output_dir": tmp_path / "run",
    }
    args = ["--config", str(REPO / "configs" / "pretrain_laion_b16.yaml")]
    args += [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    capsys.readouterr()
    assert load_script("pretrain").main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["split"] == "test" and {"t2a", "v2a", "t2v"} <= set(summary)
    assert load_model(tmp_path / "run" / "model").clip.config.activation == "gelu"


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_VITS))
def test_every_named_open_clip_vit_is_read_from_its_shapes(name):
    """Full-size shapes on the meta device (no memory): the tensors give back each name's numbers,
    heads included, and the audio encoder is made at 224 px from any of them."""
    from clip4vla.models.audio import AudioEncoder
    from clip4vla.models.open_clip_format import check_named_shapes

    config = CLIPConfig(**OPEN_CLIP_VITS[name], activation="gelu")
    with torch.device("meta"):
        clip = CLIP(config)
        audio = AudioEncoder.from_vision(clip.visual)
    assert CLIPConfig.from_state_dict(clip.state_dict()).shape() == config.shape()
    check_named_shapes(config, name, "test")
    check_named_shapes(config, f"{name}-quickgelu", "test")
    assert audio.visual.input_resolution == 224 and audio.visual.config.activation == "gelu"
