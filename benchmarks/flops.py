"""Analytic FLOP counts for the CLIP4VLA towers (used by ``pretrain_step.py`` for MFU).

Only matrix products are counted (patch-embedding convolution, attention projections, attention
scores and weighted sums, MLP, output projections): 2 FLOPs per multiply-add. LayerNorm,
softmax, QuickGELU and the loss are a fraction of a percent and, by the usual MFU convention,
left out. Attention is counted in full even for the causal text tower (what the math kernel
does; the text tower is <0.5 % of a pre-training step anyway).

Backward = 2x the forward matmul FLOPs (one product for the input gradient, one for the weight
gradient), except the patch-embedding convolution of a tower whose input needs no gradient
(pixels, spectrograms): there autograd computes only the weight gradient, so 1x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clip4vla.models.clip import CLIPConfig

__all__ = ["TowerShape", "pretrain_step_flops", "tower_backward_flops", "tower_forward_flops", "vit_shape"]


@dataclass(frozen=True)
class TowerShape:
    """What the FLOP count of one transformer tower depends on."""

    width: int
    layers: int
    tokens: int  # sequence length seen by the transformer blocks
    patch_inputs: int = 0  # 3 * patch**2 for a ViT (0: no patch convolution, e.g. text)
    patches: int = 0  # number of patches per image
    output_dim: int = 0  # final projection (applied to one pooled token per item)


def block_flops(width: int, tokens: int) -> int:
    """One pre-LN residual block, forward, per sequence."""
    qkv = 2 * tokens * width * 3 * width
    scores = 2 * tokens * tokens * width  # Q K^T summed over heads (heads * head_width = width)
    weighted = 2 * tokens * tokens * width  # softmax(.) V
    out = 2 * tokens * width * width
    mlp = 2 * (2 * tokens * width * 4 * width)
    return qkv + scores + weighted + out + mlp


def tower_forward_flops(shape: TowerShape) -> dict[str, int]:
    """Forward FLOPs of one item (image, segment or caption), split by part."""
    return {
        "patch_embed": 2 * shape.patches * shape.patch_inputs * shape.width,
        "blocks": shape.layers * block_flops(shape.width, shape.tokens),
        "projection": 2 * shape.width * shape.output_dim,
    }


def tower_backward_flops(shape: TowerShape, input_needs_grad: bool = False) -> int:
    """Backward FLOPs of one item: 2x forward, the patch convolution 1x unless its input needs grad."""
    fwd = tower_forward_flops(shape)
    conv = fwd["patch_embed"] * (2 if input_needs_grad else 1)
    return conv + 2 * (fwd["blocks"] + fwd["projection"])


def vit_shape(width: int, layers: int, resolution: int, patch: int, output_dim: int, extra_tokens: int) -> TowerShape:
    """A ViT tower: CLS + patches + ``extra_tokens`` (the audio encoder's type token) per sequence."""
    patches = (resolution // patch) ** 2
    return TowerShape(width, layers, 1 + patches + extra_tokens, 3 * patch * patch, patches, output_dim)


def pretrain_step_flops(
    config: CLIPConfig,
    batch: int,
    frames: int,
    segments: int,
    words: int,
    type_tokens: int = 1,
    grad_checkpointing: bool = False,
) -> dict[str, int]:
    """FLOPs of one pre-training step with frozen CLIP towers and a trainable audio encoder.

    ``config`` is a :class:`clip4vla.models.clip.CLIPConfig`. All frames / segments are taken as
    valid (the benchmark uses full masks). Model FLOPs exclude activation-checkpointing
    recomputation; ``hardware`` adds it (with per-block checkpointing the audio blocks' forward
    runs twice; patch embedding and projection are outside the checkpointed blocks).
    """
    vision = vit_shape(config.vision_width, config.vision_layers, config.image_resolution,
                       config.vision_patch_size, config.embed_dim, extra_tokens=0)
    audio = vit_shape(config.vision_width, config.vision_layers, config.image_resolution,
                      config.vision_patch_size, config.embed_dim, extra_tokens=type_tokens)
    text = TowerShape(config.transformer_width, config.transformer_layers, words, output_dim=config.embed_dim)

    n_frames, n_text, n_audio = batch * frames, batch, 2 * batch * segments  # clean + masked audio
    frames_fwd = n_frames * sum(tower_forward_flops(vision).values())
    text_fwd = n_text * sum(tower_forward_flops(text).values())
    audio_fwd_parts = tower_forward_flops(audio)
    audio_fwd = n_audio * sum(audio_fwd_parts.values())
    audio_bwd = n_audio * tower_backward_flops(audio)
    model = frames_fwd + text_fwd + audio_fwd + audio_bwd
    recompute = n_audio * audio_fwd_parts["blocks"] if grad_checkpointing else 0
    return {
        "frames_forward": frames_fwd,
        "text_forward": text_fwd,
        "audio_forward": audio_fwd,
        "audio_backward": audio_bwd,
        "model": model,
        "recompute": recompute,
        "hardware": model + recompute,
    }
