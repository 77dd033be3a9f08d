"""The model folder (safetensors + config.json + card), Hub ids from an on-disk cache, and
scripts/export_model.py (issue 31). Nothing here reaches the network: every Hub id is resolved with
HF_HUB_OFFLINE from a cache laid out as huggingface_hub lays it out (blobs, symlinked snapshots, refs)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from clip4vla import from_pretrained, load_model
from clip4vla.config import ModelConfig
from clip4vla.models.card import card_metrics
from clip4vla.models.checkpoints import export_model, model_card_facts
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.factory import build_model
from clip4vla.models.hub import HubModelError, parse_hub_id
from clip4vla.models.loading import CheckpointError
from clip4vla.models.preprocessing import Preprocessing
from hub_cache import COMMIT, hub_cache
from legacy_files import legacy_model_pt

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PRE = Preprocessing(max_frames=2, max_segments=2, audio_type="nb")


@pytest.fixture(scope="module")
def micro() -> CLIP4VLA:
    torch.manual_seed(0)
    return CLIP4VLA.from_config(CLIPConfig.micro())


@pytest.fixture()
def folder(micro, tmp_path) -> Path:
    return export_model(micro, tmp_path / "model", PRE, task="pretrain", step=5)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch) -> Path:
    """huggingface_hub reading only ``tmp/hub`` (its settings are read at import: patched there too)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def folder_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


# ------------------------------------------------------------------ the folder


def test_a_folder_round_trips_and_holds_no_pickle(micro, folder):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "clip4vla-model" and config["format_version"] == 1 and config["dtype"] == "float32"
    assert config["training"] == {"task": "pretrain", "step": 5}
    assert config["architecture"]["clip"]["activation"] == "quick_gelu" and config["preprocessing"]["audio_type"] == "nb"
    assert not (folder / "model.safetensors").read_bytes().startswith(b"PK")  # not a torch zip (pickle) file
    assert set(load_file(folder / "model.safetensors")) == set(micro.state_dict())
    for source in (folder, folder / "model.safetensors", str(folder)):
        model = from_pretrained(source)
        same_weights(micro, model)
        assert model.preprocessing == PRE and not model.training
    assert load_model is from_pretrained  # one loader, two names


def test_the_default_card_is_valid_front_matter_and_invents_nothing(folder):
    card = (folder / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "clip4vla" and "clip4vla" in meta["tags"]
    assert "license" not in meta and "model-index" not in meta and "datasets" not in meta  # nobody said them
    assert "Not stated by whoever trained it" in card and "Not measured for this export" in card
    assert "clip4vla.from_pretrained" in card and "@inproceedings{ruan2023clip4vla" in card
    assert "- Frames: 2 per clip" in card and "up to 2 segments" in card and "audio type token 'nb'" in card


def test_a_run_card_carries_its_settings_and_test_numbers(micro, tmp_path):
    summary = {"split": "test", "n_clips": 9, "t2a": {"R1": 23.3, "MedR": 3.0}, "v2a": {"R1": 3.6},
               "chance": {"R1": 0.4}}
    facts = model_card_facts(micro, PRE, "my-model", license="mit", description="Trained on my clips.",
                             tags=["holiday"], datasets=["me/holiday-clips"], task="pretrain", step=7, weights="last",
                             started_from="`runs/x/model`", corpora={"training": "synthetic"},
                             clips={"train": 720, "test": 240}, schedule={"epochs": 3}, config_yaml="train:\n  epochs: 3\n",
                             test_table="zero-shot retrieval on the test split ...\n  t2a  23.3", test_summary=summary)
    out = export_model(micro, tmp_path / "m", PRE, card=facts, task="pretrain")
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "mit" and "holiday" in meta["tags"] and meta["datasets"] == ["me/holiday-clips"]
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"t2a/R1": 23.3, "t2a/MedR": 3.0, "v2a/R1": 3.6}
    assert meta["model-index"][0]["results"][0]["dataset"]["split"] == "test"
    assert card_metrics(summary) == [("t2a/R1", 23.3), ("t2a/MedR", 3.0), ("v2a/R1", 3.6)]  # chance is no score
    for words in ("# my-model", "Trained on my clips.", "starting from `runs/x/model`", "step 7 (the last step)",
                  "train 720, test 240", "epochs: 3", "  t2a  23.3", "`mit`."):
        assert words in card, words


def test_a_killed_write_keeps_the_previous_folder(micro, folder):
    before = folder_files(folder)

    def dies(staging: Path) -> None:
        raise KeyboardInterrupt  # a kill in the middle of the export

    with pytest.raises(KeyboardInterrupt):
        export_model(micro, folder, Preprocessing(), extra=dies)
    assert folder_files(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no staging folder left behind
    # an ordinary re-export replaces it whole
    export_model(micro, folder, Preprocessing(max_frames=3))
    assert load_model(folder).preprocessing.max_frames == 3
    # a folder that is not ours is never replaced
    (folder.parent / "mine").mkdir()
    (folder.parent / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="mine exists and is not what this writes"):
        export_model(micro, folder.parent / "mine", PRE)
    assert (folder.parent / "mine" / "notes.txt").read_text() == "keep"


# ------------------------------------------------------------------ bad folders


def _rewrite_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_folder_records_that_do_not_fit_are_named(folder):
    (folder / "config.json").rename(folder / "config.bak")
    with pytest.raises(CheckpointError, match=r"model/config.json: not found: a model folder needs config.json"):
        load_model(folder)
    (folder / "config.bak").rename(folder / "config.json")
    _rewrite_config(folder, format_version=2)
    with pytest.raises(CheckpointError, match="config.json: model folder format version 2, written by a newer clip4vla"):
        load_model(folder)
    _rewrite_config(folder, format_version=1, format="transformers")
    with pytest.raises(CheckpointError, match="config.json: not a clip4vla model config"):
        load_model(folder)
    _rewrite_config(folder, format="clip4vla-model")
    config = json.loads((folder / "config.json").read_text())
    config["architecture"]["clip"]["vision_layers"] = 2  # the record says two blocks, the tensors hold one
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model: checkpoint does not fit the model: missing keys "
                                              r"\[clip.visual.transformer.resblocks.1"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read the model config"):
        load_model(folder)


def test_weights_that_do_not_fit_are_named(micro, folder):
    weights = folder / "model.safetensors"
    state = load_file(weights)
    save_file({**state, "extra.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[extra.weight\]"):
        load_model(folder)
    save_file({k: v for k, v in state.items() if k != "clip.ln_final.bias"}, weights)
    with pytest.raises(CheckpointError, match=r"missing keys \[clip.ln_final.bias\]"):
        load_model(folder)
    save_file({k: v.half() if k == "clip.visual.proj" else v for k, v in state.items()}, weights)
    with pytest.raises(CheckpointError, match="model.safetensors: tensor 'clip.visual.proj' is float16, config.json says "
                                              "the weights are float32"):
        load_model(folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    weights.write_bytes(struct.pack("<Q", 2**40) + raw[8:])  # a header length past the end of the file
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header: it claims 1099511627776 bytes"):
        load_model(folder)
    weights.write_bytes(struct.pack("<Q", 10) + b"not json!!" + bytes(64))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header"):
        load_model(folder)
    weights.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="model.safetensors: 2 bytes: too short"):
        load_model(folder)
    torch.save(state, weights)  # a pickle under the safetensors name is never unpickled
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header"):
        load_model(folder)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: not found"):
        load_model(folder)


def test_a_folder_that_is_no_model_is_named_with_what_it_holds(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"videos: a folder that is not a model.*\(it holds: a.mp4\)"):
        load_model(tmp_path / "videos")


# ------------------------------------------------------------------ Hub ids


def test_hub_ids_are_told_from_paths():
    assert parse_hub_id("org/name") == ("org/name", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id(f"hf-hub:org/my-model.v2@{COMMIT}") == ("org/my-model.v2", COMMIT)
    for path in ("runs/model.pt", "./org/name", "/abs/name", "a/b/c", "name", "org/x.safetensors"):
        assert parse_hub_id(path) is None, path
    for bad in ("hf-hub:org/na me", "hf-hub:bad--id/x", "hf-hub:org/-x", "hf-hub:org/x..y", "hf-hub:just-a-name"):
        with pytest.raises(HubModelError, match="is not a Hugging Face Hub id"):
            parse_hub_id(bad)


def test_a_hub_id_resolves_from_the_cache_offline(micro, folder, offline_cache):
    snapshot = hub_cache(offline_cache, "clip4vla/micro-test", folder_files(folder))
    for spec in ("clip4vla/micro-test", "hf-hub:clip4vla/micro-test", f"clip4vla/micro-test@{COMMIT}",
                 "clip4vla/micro-test@main"):
        model = from_pretrained(spec)
        same_weights(micro, model)
        assert model.preprocessing == PRE
    assert (snapshot / "model.safetensors").is_symlink()  # read through the cache's own links
    started = build_model(ModelConfig(init_from="clip4vla/micro-test", train_clip=True))  # model.init_from too
    same_weights(micro, started)
    from clip4vla.extract import model_identity  # what features and search indexes record: the same model

    assert model_identity(micro, "clip4vla/micro-test")["sha256"] == model_identity(micro, folder)["sha256"]


def test_hub_ids_that_cannot_be_resolved_say_the_id_and_the_cache(folder, offline_cache):
    start = time.monotonic()
    with pytest.raises(HubModelError) as err:
        from_pretrained("clip4vla/not-downloaded")
    assert time.monotonic() - start < 10  # offline: the cache is looked at, nothing waits on a network
    message = str(err.value)
    assert "clip4vla/not-downloaded" in message and str(offline_cache) in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(HubModelError, match="clip4vla/micro-test@v9"):
        hub_cache(offline_cache, "clip4vla/micro-test", folder_files(folder))
        from_pretrained("clip4vla/micro-test@v9")  # a revision the cache does not know
    files = folder_files(folder)
    del files["model.safetensors"]
    hub_cache(offline_cache, "clip4vla/half", files)
    with pytest.raises(HubModelError, match=r"the cached snapshot .*snapshots/0123.* lacks model.safetensors"):
        from_pretrained("clip4vla/half")
    hub_cache(offline_cache, "someone/text-model", {"config.json": b'{"architectures": ["BertModel"]}'})
    with pytest.raises(HubModelError, match=r"holds neither a clip4vla model folder .* nor an open_clip model "
                                            r"\(open_clip_config.json\); its files: config.json"):
        from_pretrained("someone/text-model")


def test_an_open_clip_hub_repository_loads_like_its_folder(tmp_path, offline_cache):
    pytest.importorskip("open_clip")
    from open_clip_models import open_clip_hub_folder

    model_cfg = {"embed_dim": 32, "quick_gelu": True,
                 "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
    weights, oc_model = open_clip_hub_folder(tmp_path / "oc", "hubtest", model_cfg)
    files = folder_files(weights.parent)
    files["config.json"] = b'{"architectures": ["CLIPModel"]}'  # the transformers copy such repos also hold
    hub_cache(offline_cache, "laion/tiny-test", files)
    model = from_pretrained("laion/tiny-test")
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.clip.encode_image(images), oc_model.encode_image(images), atol=1e-5, rtol=1e-4)
    assert model.clip.config.activation == "quick_gelu"  # from open_clip_config.json
    assert torch.equal(model.audio.visual.conv1.weight, model.clip.visual.conv1.weight)  # the paper's initialisation


# ------------------------------------------------------------------ scripts/export_model.py


def run_export(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "export_model.py"), *args], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)


def test_export_script_converts_every_source(micro, tmp_path):
    legacy = legacy_model_pt(micro, tmp_path / "model.pt", PRE, task="retrieval")
    done = run_export(str(legacy), str(tmp_path / "from_pt"), "--license", "apache-2.0", "--tag", "mine",
                      "--description", "A micro model for tests.")
    assert done.returncode == 0, done.stderr
    assert "(a clip4vla 0.2 model.pt) ->" in done.stdout and "hf upload" in done.stdout
    same_weights(micro, load_model(tmp_path / "from_pt"))
    card = (tmp_path / "from_pt" / "README.md").read_text()
    assert front_matter(card)["license"] == "apache-2.0" and "mine" in front_matter(card)["tags"]
    assert "A micro model for tests." in card and "Converted with `scripts/export_model.py`" in card
    # an OpenAI TorchScript archive: its audio tower is the vision tower's copy, and the card says so
    done = run_export(str(FIXTURES / "clip_tiny_vit_jit.pt"), str(tmp_path / "from_openai"))
    assert done.returncode == 0, done.stderr
    model = load_model(tmp_path / "from_openai")
    assert torch.equal(model.audio.visual.conv1.weight, model.clip.visual.conv1.weight)
    assert "not trained on sound" in (tmp_path / "from_openai" / "README.md").read_text()
    # a plain state dict needs its activation said, in this script's words
    done = run_export(str(FIXTURES / "clip_tiny_vit.pt"), str(tmp_path / "plain"))
    assert done.returncode == 2 and "--activation or --open-clip-model" in done.stderr and not (tmp_path / "plain").exists()
    assert run_export(str(FIXTURES / "clip_tiny_vit.pt"), str(tmp_path / "plain"), "--activation", "quick_gelu").returncode == 0
    # an existing model folder is replaced only when asked; anything else never
    again = run_export(str(legacy), str(tmp_path / "from_pt"))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    assert run_export(str(legacy), str(tmp_path / "from_pt"), "--overwrite").returncode == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    refused = run_export(str(legacy), str(tmp_path / "notes"), "--overwrite")
    assert refused.returncode == 2 and "is not an empty folder or a model folder" in refused.stderr


def test_export_script_reads_a_hub_id_from_the_cache(folder, tmp_path):
    cache = tmp_path / "hub"
    hub_cache(cache, "clip4vla/micro-test", folder_files(folder))
    done = run_export("clip4vla/micro-test", str(tmp_path / "copy"), env={"HF_HUB_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    assert load_file(tmp_path / "copy" / "model.safetensors").keys() == load_file(folder / "model.safetensors").keys()
    missing = run_export("clip4vla/absent", str(tmp_path / "nothing"), env={"HF_HUB_CACHE": str(cache)})
    assert missing.returncode == 2 and "clip4vla/absent" in missing.stderr and str(cache) in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "nothing").exists()
    shutil.rmtree(cache)


def test_export_script_writes_onnx_encoders_into_the_folder(micro, tmp_path):
    pytest.importorskip("onnxruntime")
    legacy = legacy_model_pt(micro, tmp_path / "model.pt", PRE)
    done = run_export(str(legacy), str(tmp_path / "with_onnx"), "--onnx")
    assert done.returncode == 0, done.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "with_onnx").iterdir())
    assert names == ["README.md", "audio.onnx", "config.json", "model.safetensors", "text.onnx", "video.onnx"]
    card = (tmp_path / "with_onnx" / "README.md").read_text()
    assert "text.onnx" in card and "segment_mask" in card  # the card says how to feed them
