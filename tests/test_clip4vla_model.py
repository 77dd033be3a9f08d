"""The tri-encoder module and the shared pooling function."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip4vla.models import CLIP4VLA, CLIPConfig, masked_mean_normalised

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = CLIPConfig.micro()


@pytest.fixture()
def model() -> CLIP4VLA:
    torch.manual_seed(0)
    return CLIP4VLA.from_config(SMALL).eval()


def _tokens(batch: int, length: int, eot_at: list[int]) -> torch.Tensor:
    tokens = torch.zeros(batch, length, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    for row, eot in enumerate(eot_at):
        tokens[row, 0] = 49406
        tokens[row, 1:eot] = torch.randint(1, 49000, (eot - 1,), generator=generator)
        tokens[row, eot] = 49407
    return tokens


# ----------------------------------------------------------------------------- pooling


def test_pooling_matches_definition():
    features = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    pooled = masked_mean_normalised(features, mask)
    unit = F.normalize(features, dim=-1)
    expected0 = F.normalize(unit[0, [0, 1, 3]].mean(0), dim=0)
    torch.testing.assert_close(pooled[0], expected0)
    torch.testing.assert_close(pooled[1], unit[1, 1])  # one valid item: its own direction
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))


def test_pooling_ignores_padded_values_and_empty_rows_are_zero():
    features = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    changed = features.clone()
    changed[~mask] = 1e6
    pooled = masked_mean_normalised(changed, mask)
    torch.testing.assert_close(pooled, masked_mean_normalised(features, mask))
    assert torch.equal(pooled[1], torch.zeros(5))  # clip without valid items: zeros, not NaN
    empty = masked_mean_normalised(torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    assert torch.equal(empty, torch.zeros(1, 4))


def test_pooling_rejects_bad_masks():
    with pytest.raises(TypeError, match="torch.bool"):
        masked_mean_normalised(torch.randn(1, 2, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        masked_mean_normalised(torch.randn(1, 2, 3), torch.ones(2, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------- tri-encoder


def test_encode_text_with_max_words(model):
    tokens = _tokens(3, 32, [5, 31, 12])
    with torch.no_grad():
        short = model.encode_text(tokens)
        full = model.encode_text(F.pad(tokens, (0, 77 - 32)))
    assert short.shape == (3, 64)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)  # causal: padding after EOT is invisible
    with pytest.raises(ValueError, match="S <= 77"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_encode_video_batches_valid_frames(model):
    frames = torch.randn(2, 3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    calls: list[int] = []
    handle = model.clip.visual.conv1.register_forward_hook(lambda _m, i, _o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        frame_features, global_ = model.encode_video(frames, mask)
        direct = model.clip.encode_image(frames[mask])
    handle.remove()
    assert calls == [3, 3]  # encode_video: one call with the three valid frames; then `direct`
    assert frame_features.shape == (2, 3, 64) and global_.shape == (2, 64)
    torch.testing.assert_close(frame_features[mask], direct, atol=1e-5, rtol=0)
    assert torch.equal(frame_features[~mask], torch.zeros(3, 64))
    torch.testing.assert_close(global_, masked_mean_normalised(frame_features, mask))


def test_encode_video_without_padding_encodes_a_view(model):
    """All frames valid: the tower sees the batch itself (no copy), with the same features."""
    frames = torch.randn(2, 3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 3, dtype=torch.bool)
    seen: list[torch.Tensor] = []
    handle = model.clip.visual.conv1.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    with torch.no_grad():
        frame_features, global_ = model.encode_video(frames, mask)
        per_clip = torch.stack([model.clip.encode_image(clip) for clip in frames])
    handle.remove()
    assert seen[0].data_ptr() == frames.data_ptr()
    torch.testing.assert_close(frame_features, per_clip, atol=1e-5, rtol=0)
    torch.testing.assert_close(global_, masked_mean_normalised(per_clip, mask))


def test_encode_audio_is_the_audio_encoder(model):
    segments = torch.randn(2, 2, 3, 224, 224)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    with torch.no_grad():
        ours = model.encode_audio(segments, mask, "both")
        direct = model.audio(segments, mask, "both")
    torch.testing.assert_close(ours[0], direct[0])
    torch.testing.assert_close(ours[1], direct[1])


def test_audio_init_options():
    torch.manual_seed(0)
    vision_init = CLIP4VLA.from_config(SMALL, audio_init="vision")
    torch.manual_seed(0)
    scratch = CLIP4VLA.from_config(SMALL, audio_init="scratch", use_type_token=False)
    assert torch.equal(vision_init.audio.visual.conv1.weight, vision_init.clip.visual.conv1.weight)
    assert not torch.equal(scratch.audio.visual.conv1.weight, scratch.clip.visual.conv1.weight)
    assert scratch.audio.type_embedding is None
    with pytest.raises(ValueError, match="audio_init"):
        CLIP4VLA.from_config(SMALL, audio_init="imagenet")


def test_from_openai_checkpoint():
    from clip4vla import load_model

    model = load_model(FIXTURES / "clip_tiny_vit_jit.pt")
    # the audio encoder keeps 224x224 segments; positions resampled from the 4x4 grid to 28x28 (issue 20)
    assert model.clip.config.image_resolution == 32 and model.audio.visual.input_resolution == 224
    assert torch.equal(model.audio.visual.proj, model.clip.visual.proj)
    assert model.audio.visual.positional_embedding.shape == (1 + 28 * 28 + 1, 128)
    with torch.no_grad():
        _, global_ = model.encode_audio(torch.randn(1, 2, 3, 224, 224), torch.ones(1, 2, dtype=torch.bool), "vb")
    assert global_.shape == (1, 32)


def test_freeze_clip_trains_only_the_audio_encoder(model):
    model.train()
    model.freeze_clip(True)
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert all(p.requires_grad for p in model.audio.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.audio.parameters()}
    tokens = _tokens(2, 32, [4, 9])
    frames = torch.randn(2, 2, 3, 224, 224)
    mask = torch.ones(2, 2, dtype=torch.bool)
    text = model.encode_text(tokens)
    _, video = model.encode_video(frames, mask)
    _, audio = model.encode_audio(frames, mask, torch.tensor([0, 1]))
    assert not text.requires_grad and not video.requires_grad  # frozen towers run without a graph
    (F.normalize(text, dim=-1) @ audio.t() + video @ audio.t()).sum().backward()
    assert all(p.grad is not None for p in model.audio.parameters())
    model.freeze_clip(False)
    assert all(p.requires_grad for p in model.clip.parameters())
    assert model.encode_text(tokens).requires_grad


def test_set_grad_checkpointing_reaches_every_tower(model):
    model.set_grad_checkpointing(True)
    transformers = [model.clip.transformer, model.clip.visual.transformer, model.audio.visual.transformer]
    assert all(t.grad_checkpointing for t in transformers)
    model.set_grad_checkpointing(False)
    assert not any(t.grad_checkpointing for t in transformers)


def test_tiny_config_tri_encoder_under_bf16_autocast():
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.tiny()).eval()
    mask = torch.tensor([[1, 0]], dtype=torch.bool)
    segments = torch.randn(1, 2, 3, 224, 224)
    with torch.no_grad():
        _, reference = model.encode_audio(segments, mask, 0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, video = model.encode_video(segments, mask)
            _, audio = model.encode_audio(segments, mask, 0.5)
    assert video.shape == audio.shape == (1, 128)
    assert F.cosine_similarity(audio, reference).item() > 0.99
