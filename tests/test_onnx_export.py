"""ONNX export of the three encoders: onnxruntime gives our torch embeddings, at any batch size.

The oracle is the torch API itself (``embed_text``, ``encode_video``, ``encode_audio``), which
encodes only the valid items of a padded batch; the exported graphs encode every item and mask
the padding out, so these tests are also the proof that both give the same embedding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clip4vla
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.fusion import FusionHead
from clip4vla.models.onnx_export import ONNX_FILES, export_onnx, onnx_usage
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.text import tokenize

ort = pytest.importorskip("onnxruntime")

ATOL = 1e-4  # the bound on normalised fp32 embeddings; we see ~1e-7
PRE = Preprocessing(max_words=16, max_frames=3, max_segments=2)
TEXTS = ["a dog barks twice", "rain on a tin roof", "someone speaks slowly"]


def _model(use_type_token: bool) -> CLIP4VLA:
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.micro(), use_type_token=use_type_token)
    model.preprocessing = PRE
    if use_type_token:  # a fine-tuned model carries a head; the export must leave it out
        model.attach_head("fusion", FusionHead.from_clip(model.clip, "g2l", layers=1))
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["type-token", "no-type-token"])
def exported(request, tmp_path_factory):
    model = _model(request.param)
    model.train()
    model.clip.eval()  # a frozen tower in eval mode while the rest trains: export must keep both
    folder = tmp_path_factory.mktemp("onnx") / "nested"
    paths = export_onnx(model, folder)
    assert model.audio.training and not model.clip.training and not model.clip.visual.training
    sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in paths.items()}
    return model.eval(), folder, paths, sessions


def _max_diff(onnx_out: np.ndarray, torch_out: torch.Tensor) -> float:
    assert onnx_out.dtype == np.float32 and onnx_out.shape == tuple(torch_out.shape)
    return float(np.abs(onnx_out - torch_out.numpy()).max())


def test_folder_holds_the_three_files_only(exported):
    _, folder, paths, sessions = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(ONNX_FILES.values())
    assert {name: p.name for name, p in paths.items()} == ONNX_FILES
    for name, inputs in {"text": ["tokens"], "video": ["frames", "frame_mask"],
                         "audio": ["segments", "segment_mask", "audio_type"]}.items():
        assert [i.name for i in sessions[name].get_inputs()] == inputs
        assert [o.name for o in sessions[name].get_outputs()] == ["embedding"]


@pytest.mark.parametrize("batch", [1, 3])
def test_text_gives_embed_text_rows(exported, batch):
    model, _, _, sessions = exported
    tokens = tokenize(TEXTS[:batch], context_length=PRE.max_words)
    (out,) = sessions["text"].run(None, {"tokens": tokens.numpy()})
    assert _max_diff(out, clip4vla.embed_text(model, TEXTS[:batch])) < ATOL


@pytest.mark.parametrize("batch", [1, 3])
def test_video_gives_encode_video_with_padded_frames(exported, batch):
    model, _, _, sessions = exported
    torch.manual_seed(1)
    frames = torch.randn(batch, PRE.max_frames, 3, 224, 224)
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])[:batch]
    frames[~mask] = 0.0  # padding as load_video_frames writes it
    with torch.no_grad():
        expected = model.encode_video(frames, mask)[1]
    (out,) = sessions["video"].run(None, {"frames": frames.numpy(), "frame_mask": mask.numpy()})
    assert _max_diff(out, expected) < ATOL
    if batch == 3:  # a clip without frames is a zero row, as in torch
        assert not out[2].any()
        frames[~mask] = float("nan")  # garbage in the padding never reaches the mean
        (garbage,) = sessions["video"].run(None, {"frames": frames.numpy(), "frame_mask": mask.numpy()})
        assert _max_diff(garbage, expected) < ATOL


@pytest.mark.parametrize("batch", [1, 3])
def test_audio_gives_encode_audio_with_per_clip_types(exported, batch):
    model, _, _, sessions = exported
    torch.manual_seed(2)
    segments = torch.randn(batch, PRE.max_segments, 3, 224, 224)
    mask = torch.tensor([[True, False], [True, True], [True, False]])[:batch]
    segments[~mask] = 0.0
    ids = torch.tensor([1, 0, 1])[:batch]  # 0 = [VB], 1 = [NB], mixed within one batch
    with torch.no_grad():
        expected = model.encode_audio(segments, mask, ids)[1]
    feed = {"segments": segments.numpy(), "segment_mask": mask.numpy(), "audio_type": ids.numpy()}
    (out,) = sessions["audio"].run(None, feed)
    assert _max_diff(out, expected) < ATOL
    (flipped,) = sessions["audio"].run(None, {**feed, "audio_type": (1 - ids).numpy()})
    if model.audio.use_type_token:  # the ids reach the graph: the other type is another embedding
        assert float(np.abs(flipped - out).max()) > 1e-3
    else:  # the input is only there for one signature
        assert np.array_equal(flipped, out)


def test_usage_names_every_input_with_its_shape_and_dtype(exported):
    model, _, _, sessions = exported
    text = onnx_usage(model)
    kinds = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool"}
    for name, session in sessions.items():
        for arg in session.get_inputs():
            shape = ", ".join("B" if isinstance(d, str) else str(d) for d in arg.shape)
            assert f"| `{ONNX_FILES[name]}` | `{arg.name}` | {kinds[arg.type]} | `[{shape}]` |" in text
    assert f"context_length={PRE.max_words}" in text and "0.48145466" in text and "16000 Hz" in text
    assert ("no audio type token" in text) != model.audio.use_type_token
