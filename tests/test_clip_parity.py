"""CLIP towers against the golden tiny OpenAI CLIP (tests/fixtures/GOLDEN-README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip4vla.models.clip import CLIP, CLIPConfig, load_openai_clip

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = RTOL = 1e-5  # golden README: features and intermediates
LOGIT_ATOL = 1e-4  # golden README: logit_scale ~14.3 amplifies

# Tensors that OpenAI's convert_weights() rounds to fp16 inside build_model (clip.load of a plain
# state dict): conv/linear/attention weights and biases, and the two projections.
FP16_ROUNDED_SUFFIXES = (
    "conv1.weight",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
    "visual.proj",
    "text_projection",
)


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURES / "clip_tiny_vit_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def plain_state() -> dict:
    return torch.load(FIXTURES / "clip_tiny_vit.pt", weights_only=True)


@pytest.fixture(scope="module")
def model() -> CLIP:
    return load_openai_clip(FIXTURES / "clip_tiny_vit.pt")


def _outputs(model: CLIP, golden: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        logits_per_image, logits_per_text = model(golden["images"], golden["tokens"])
        return {
            "encode_image": model.encode_image(golden["images"]),
            "encode_text": model.encode_text(golden["tokens"]),
            "logits_per_image": logits_per_image,
            "logits_per_text": logits_per_text,
        }


def _assert_matches(outputs: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name in ("encode_image", "encode_text"):
        torch.testing.assert_close(outputs[name], expected[name], atol=ATOL, rtol=RTOL, msg=name)
    for name in ("logits_per_image", "logits_per_text"):
        torch.testing.assert_close(outputs[name], expected[name], atol=LOGIT_ATOL, rtol=0, msg=name)


def test_config_inferred_from_golden_state_dict(plain_state, golden):
    config = CLIPConfig.from_state_dict(plain_state)
    expected = golden["config"]
    for field in expected:
        assert getattr(config, field) == expected[field], field
    # heads follow width // 64: vision 128 -> 2, text 64 -> 1
    assert (config.vision_heads, config.transformer_heads) == (2, 1)


def test_state_dict_keys_and_shapes_are_openai(plain_state):
    with torch.device("meta"):
        model = CLIP(CLIPConfig.from_state_dict(plain_state))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in plain_state.items()}


def test_plain_file_matches_golden_outputs(model, golden):
    assert sum(p.numel() for p in model.parameters()) == 3_697_217
    _assert_matches(_outputs(model, golden), golden)


def test_intermediates_match_golden(model, golden):
    captured: dict[str, torch.Tensor] = {}
    names = {
        "visual_conv1_out": model.visual.conv1,
        "visual_ln_pre_out": model.visual.ln_pre,
        "visual_ln_post_out": model.visual.ln_post,
        "text_ln_final_out": model.ln_final,
    }
    handles = [
        module.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out.detach()))
        for key, module in names.items()
    ]
    try:
        _outputs(model, golden)
    finally:
        for handle in handles:
            handle.remove()
    for key, expected in golden["intermediates"].items():
        torch.testing.assert_close(captured[key], expected, atol=ATOL, rtol=RTOL, msg=key)


def test_eot_pooling_index_is_first_eot(model, golden):
    tokens = golden["tokens"].long()
    assert torch.equal(tokens.argmax(-1), golden["eot_index"])
    # a second EOT after the first must not change the feature (pooling is at the first one)
    extra = tokens.clone()
    extra[:, -1] = 49407
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(extra), model.encode_text(tokens), atol=ATOL, rtol=RTOL)


def test_short_context_uses_leading_positions(model, golden):
    """max_words 32: with EOT inside the window the causal tower gives the same feature."""
    tokens = golden["tokens"].long()
    assert int(golden["eot_index"].max()) < 32
    with torch.no_grad():
        short = model.encode_text(tokens[:, :32])
    torch.testing.assert_close(short, golden["encode_text"], atol=ATOL, rtol=RTOL)


def test_jit_archive_matches_official_load(golden):
    model = load_openai_clip(FIXTURES / "clip_tiny_vit_jit.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    outputs = _outputs(model, golden)
    _assert_matches(outputs, golden["clip_load_jitarchive_cpu_jitFalse"])
    _assert_matches(outputs, golden["clip_load_jitarchive_cpu_jitTrue"])


def test_plain_load_with_openai_fp16_rounding_matches_clip_load(plain_state, golden):
    rounded = {
        k: (v.half().float() if k.endswith(FP16_ROUNDED_SUFFIXES) else v) for k, v in plain_state.items()
    }
    assert sum(not torch.equal(rounded[k], plain_state[k]) for k in rounded) > 20  # rounding happened
    model = load_openai_clip(rounded)
    _assert_matches(_outputs(model, golden), golden["clip_load_plain_cpu"])
    # and the unrounded model is measurably different: the comparison above is not vacuous
    exact = load_openai_clip(plain_state)
    diff = (_outputs(exact, golden)["encode_image"] - golden["clip_load_plain_cpu"]["encode_image"]).abs().max()
    assert diff > ATOL


@pytest.mark.parametrize(
    "config, expected",
    [(CLIPConfig.vit_b_32(), 151_277_313), (CLIPConfig.vit_b_16(), 149_620_737)],
    ids=["ViT-B/32", "ViT-B/16"],
)
def test_full_size_parameter_counts(config, expected):
    with torch.device("meta"):
        model = CLIP(config)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert CLIPConfig.from_state_dict(model.state_dict()) == config


def test_tiny_config_round_trips_and_takes_224_images():
    config = CLIPConfig.tiny()
    assert (config.image_resolution, config.vision_patch_size, config.context_length) == (224, 32, 77)
    torch.manual_seed(0)
    model = CLIP(config).eval()
    assert CLIPConfig.from_state_dict(model.state_dict()) == config
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 224, 224)).shape == (2, config.embed_dim)


def test_wrong_image_size_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        model.encode_image(torch.randn(1, 3, 224, 224))


def test_bf16_autocast_runs_close_to_fp32(model, golden):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        image = model.encode_image(golden["images"])
        text = model.encode_text(golden["tokens"])
    assert image.dtype == torch.bfloat16
    for ours, ref in ((image, golden["encode_image"]), (text, golden["encode_text"])):
        cosine = torch.nn.functional.cosine_similarity(ours.float(), ref, dim=-1)
        assert bool((cosine > 0.99).all()), cosine


def test_grad_checkpointing_gives_same_gradients(plain_state, golden):
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = load_openai_clip(plain_state).train()
        model.set_grad_checkpointing(checkpointing)
        logits_per_image, _ = model(golden["images"], golden["tokens"])
        logits_per_image.logsumexp(-1).sum().backward()
        return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5, msg=key)
