"""The audio encoder: initialisation, type token modes, batching, REF conversion."""

from __future__ import annotations

import pytest
import torch

from clip4vla.models.audio import AudioEncoder
from clip4vla.models.clip import CLIP, CLIPConfig
from clip4vla.models.loading import CheckpointError
from clip4vla.models.pooling import masked_mean_normalised

# Real segment geometry (224x224, 32 px patches -> 49 patches), small width/depth for speed.
SMALL = CLIPConfig(
    embed_dim=32,
    image_resolution=224,
    vision_layers=2,
    vision_width=64,
    vision_heads=1,
    vision_patch_size=32,
    context_length=77,
    vocab_size=1000,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=1,
)
ATOL = 1e-5


@pytest.fixture(scope="module")
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(SMALL).eval()


@pytest.fixture()
def encoder(clip) -> AudioEncoder:
    torch.manual_seed(1)
    return AudioEncoder.from_vision(clip.visual).eval()


def _segments(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _sequence_lengths(encoder: AudioEncoder, fn) -> list[int]:
    """Token counts seen by ln_pre during ``fn()``."""
    seen: list[int] = []
    handle = encoder.visual.ln_pre.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[1]))
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_from_vision_copies_every_tensor(clip, encoder):
    vision = clip.visual.state_dict()
    audio = encoder.visual.state_dict()
    assert vision.keys() == audio.keys()
    for key, value in vision.items():
        ours = audio[key]
        assert ours.data_ptr() != value.data_ptr(), f"{key} shares storage with the vision tower"
        if key == "positional_embedding":
            assert ours.shape == (1 + 49 + 1, 64)
            assert torch.equal(ours[:50], value)
            assert not torch.equal(ours[50], torch.zeros(64))  # type position: random, not zero
        else:
            assert torch.equal(ours, value), key
    assert encoder.type_embedding.shape == (2, 64)
    # training the audio copy must leave the vision tower alone
    before = clip.visual.conv1.weight.clone()
    with torch.no_grad():
        encoder.visual.conv1.weight.add_(1.0)
    assert torch.equal(clip.visual.conv1.weight, before)


def test_scratch_is_random_and_same_architecture(clip):
    torch.manual_seed(2)
    scratch = AudioEncoder.scratch(SMALL)
    assert {k: v.shape for k, v in scratch.state_dict().items()} == {
        k: v.shape for k, v in AudioEncoder.from_vision(clip.visual).state_dict().items()
    }
    assert not torch.equal(scratch.visual.conv1.weight, clip.visual.conv1.weight)
    assert scratch.type_embedding.std().item() == pytest.approx(64**-0.5, rel=0.5)


def test_type_modes(encoder):
    segments = _segments(3)
    with torch.no_grad():
        out = {mode: encoder.encode_segments(segments, mode) for mode in ("vb", "nb", "both")}
        out.update({w: encoder.encode_segments(segments, w) for w in (0.0, 0.5, 1.0)})
    assert out["vb"].shape == (3, 32)
    assert not torch.allclose(out["vb"], out["nb"], atol=1e-3)
    torch.testing.assert_close(out[0.0], out["vb"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1.0], out["nb"], atol=ATOL, rtol=0)
    for other in ("vb", "nb"):
        assert not torch.allclose(out[0.5], out[other], atol=1e-3)
        assert not torch.allclose(out["both"], out[other], atol=1e-3)
    # w = 0.5 is the midpoint token
    table = encoder.type_embedding
    torch.testing.assert_close(encoder.type_tokens(0.5, 2), ((table[0] + table[1]) / 2).expand(2, 1, -1))


def test_sequence_lengths_per_mode(encoder):
    segments = _segments(2)
    with torch.no_grad():
        assert _sequence_lengths(encoder, lambda: encoder.encode_segments(segments, "vb")) == [51]
        assert _sequence_lengths(encoder, lambda: encoder.encode_segments(segments, "both")) == [52]


def test_both_uses_the_type_position_for_both_tokens(encoder):
    captured = []
    handle = encoder.visual.ln_pre.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    with torch.no_grad():
        encoder.encode_segments(_segments(1), "both")
    handle.remove()
    tokens = captured[0][0]  # [52, W]
    type_position = encoder.visual.positional_embedding[-1]
    torch.testing.assert_close(tokens[-2], encoder.type_embedding[0] + type_position)
    torch.testing.assert_close(tokens[-1], encoder.type_embedding[1] + type_position)


def test_per_segment_ids_match_per_mode_rows(encoder):
    segments = _segments(4)
    ids = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        mixed = encoder.encode_segments(segments, ids)
        vb = encoder.encode_segments(segments, "vb")
        nb = encoder.encode_segments(segments, "nb")
    expected = torch.where(ids[:, None] == 1, nb, vb)
    torch.testing.assert_close(mixed, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "bad, error",
    [("speech", ValueError), (1.5, ValueError), (-0.1, ValueError), (True, TypeError),
     (torch.tensor([0, 2]), ValueError), (torch.tensor([0, 1, 1]), ValueError),
     (torch.tensor([True, False]), TypeError), (None, TypeError)],
)
def test_bad_audio_type(encoder, bad, error):
    with pytest.raises(error):
        encoder.encode_segments(_segments(2), bad)


def test_forward_encodes_valid_segments_once(encoder):
    segments = torch.randn(3, 4, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    batches: list[int] = []
    handle = encoder.visual.conv1.register_forward_hook(lambda _m, inputs, _o: batches.append(inputs[0].shape[0]))
    with torch.no_grad():
        features, global_ = encoder(segments, mask, "nb")
    handle.remove()
    assert batches == [4]  # one call, valid segments only
    assert features.shape == (3, 4, 32) and global_.shape == (3, 32)
    assert torch.equal(features[~mask], torch.zeros(int((~mask).sum()), 32))
    torch.testing.assert_close(global_, masked_mean_normalised(features, mask))
    assert torch.equal(global_[2], torch.zeros(32))  # clip without audio: zeros, no NaN
    # the valid rows equal encoding them directly
    with torch.no_grad():
        direct = encoder.encode_segments(segments[mask], "nb")
    torch.testing.assert_close(features[mask], direct, atol=ATOL, rtol=0)
    # padded content is never looked at
    changed = segments.clone()
    changed[~mask] = 1e3
    with torch.no_grad():
        features2, global2 = encoder(changed, mask, "nb")
    assert torch.equal(features2, features) and torch.equal(global2, global_)


def test_forward_with_no_valid_segment(encoder):
    mask = torch.zeros(2, 3, dtype=torch.bool)
    with torch.no_grad():
        features, global_ = encoder(torch.randn(2, 3, 3, 224, 224), mask, "vb")
    assert torch.equal(features, torch.zeros(2, 3, 32)) and torch.equal(global_, torch.zeros(2, 32))


def test_forward_per_clip_and_per_segment_ids(encoder):
    segments = torch.randn(2, 3, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        per_clip, _ = encoder(segments, mask, torch.tensor([0, 1]))
        per_segment, _ = encoder(segments, mask, torch.tensor([[0, 0, 1], [1, 1, 1]]))
        vb, _ = encoder(segments, mask, "vb")
        nb, _ = encoder(segments, mask, "nb")
    torch.testing.assert_close(per_clip[0], vb[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(per_clip[1], nb[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(per_segment, per_clip, atol=ATOL, rtol=0)  # id of padded slot unused
    with pytest.raises(ValueError, match="per clip"):
        encoder(segments, mask, torch.tensor([0, 1, 1, 0]))


def test_no_type_token_ablation(clip):
    encoder = AudioEncoder.from_vision(clip.visual, use_type_token=False).eval()
    assert encoder.type_embedding is None
    assert encoder.visual.positional_embedding.shape == (50, 64)
    assert "type_embedding" not in encoder.state_dict()
    segments = _segments(2)
    with torch.no_grad():
        assert _sequence_lengths(encoder, lambda: encoder.encode_segments(segments, "vb")) == [50]
        vb = encoder.encode_segments(segments, "vb")
        nb = encoder.encode_segments(segments, "nb")
        # without a type token the audio tower is exactly the vision tower
        torch.testing.assert_close(vb, clip.visual(segments), atol=ATOL, rtol=0)
    assert torch.equal(vb, nb)


def _reference_state(encoder: AudioEncoder, prefix: str) -> dict[str, torch.Tensor]:
    """The released code's key layout: ``<prefix>visual.*`` with ``control_embedding``."""
    state = {}
    for key, value in encoder.state_dict().items():
        name = "visual.control_embedding" if key == "type_embedding" else key
        state[prefix + name] = value.clone()
    return state


@pytest.mark.parametrize("prefix", ["audio.", ""], ids=["audio.visual", "visual"])
def test_reference_converter(encoder, prefix):
    state = _reference_state(encoder, prefix)
    assert state[f"{prefix}visual.positional_embedding"].shape[0] == 51
    if prefix:  # a full REF checkpoint has other heads; they are not the audio encoder's business
        state["clip.logit_scale"] = torch.tensor(4.6)
        state["clip.visual.proj"] = torch.zeros(64, 32)
        state["cross.embeddings.weight"] = torch.zeros(3, 3)
    loaded = AudioEncoder.from_reference_state_dict({k: v.half() for k, v in state.items()}).eval()
    assert loaded.use_type_token and loaded.type_embedding.dtype == torch.float32
    torch.testing.assert_close(loaded.type_embedding, encoder.type_embedding.half().float())
    reference = AudioEncoder.from_reference_state_dict(state).eval()
    segments = _segments(2)
    with torch.no_grad():
        for mode in ("vb", "nb", 0.5, "both"):
            ours = reference.encode_segments(segments, mode)
            torch.testing.assert_close(ours, encoder.encode_segments(segments, mode), atol=ATOL, rtol=0)


def test_reference_converter_without_type_token(clip):
    ablation = AudioEncoder.from_vision(clip.visual, use_type_token=False)
    loaded = AudioEncoder.from_reference_state_dict(_reference_state(ablation, "audio."))
    assert not loaded.use_type_token
    assert torch.equal(loaded.visual.proj, ablation.visual.proj)


def test_reference_converter_errors(encoder):
    state = _reference_state(encoder, "audio.")
    no_type = {k: v for k, v in state.items() if "control_embedding" not in k}
    with pytest.raises(CheckpointError, match="positional_embedding has 51 rows"):
        AudioEncoder.from_reference_state_dict(no_type)
    bad = dict(state)
    bad["audio.visual.control_embedding"] = torch.zeros(3, 64)
    with pytest.raises(CheckpointError, match=r"type_embedding: checkpoint \(3, 64\) vs model \(2, 64\)"):
        AudioEncoder.from_reference_state_dict(bad)
    extra = dict(state)
    extra["audio.visual.bg_embedding"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[visual.bg_embedding\]"):
        AudioEncoder.from_reference_state_dict(extra)
    with pytest.raises(CheckpointError, match="no keys under"):
        AudioEncoder.from_reference_state_dict({"clip.logit_scale": torch.tensor(1.0)})


def test_grad_checkpointing_gives_same_gradients(clip):
    segments = torch.randn(2, 2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(7)
        encoder = AudioEncoder.from_vision(clip.visual).train()
        encoder.set_grad_checkpointing(checkpointing)
        _, global_ = encoder(segments, mask, "both")
        global_.pow(3).sum().backward()
        return {k: p.grad for k, p in encoder.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert all(g is not None for g in plain.values())
    assert plain["type_embedding"].abs().sum() > 0
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5, msg=key)


def test_bf16_autocast(encoder):
    segments = torch.randn(1, 2, 3, 224, 224)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        features, global_ = encoder(segments, mask, 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features16, global16 = encoder(segments, mask, 0.5)
    assert features16.dtype == torch.bfloat16 and global16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(global16, global_, dim=-1).min() > 0.99
