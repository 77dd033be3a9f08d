"""OpenAI CLIP (ViT variants): vision and text towers with OpenAI's state-dict layout.

Parameter names follow OpenAI's checkpoints exactly (``visual.conv1.weight``,
``transformer.resblocks.N.attn.in_proj_weight``, ``ln_final``, ``text_projection``, ...) so that
released weights load with ``strict=True`` and no renaming. The computation is our own:
batch-first ``[N, L, W]`` activations and ``F.scaled_dot_product_attention`` instead of
``nn.MultiheadAttention``, LayerNorm in float32 (as OpenAI, so fp16/bf16 runs stay stable).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clip4vla.models.loading import (
    CheckpointError,
    check_state_dict,
    read_state_dict,
    to_float32_state_dict,
)

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "CLIP",
    "CLIPConfig",
    "CheckpointError",
    "LayerNorm",
    "QuickGELU",
    "ResidualAttentionBlock",
    "TextTransformer",
    "Transformer",
    "VisionConfig",
    "VisionTransformer",
    "clip_with_weights",
    "infer_vision_config",
    "load_openai_clip",
]

# OpenAI's rule, kept by open_clip's ViT-B and ViT-L: every attention head is 64 wide. No tensor
# holds the number of heads, so a plain state dict is read by this rule; a file that records its
# heads (our exports, open_clip's open_clip_config.json) is read by its record.
HEAD_WIDTH = 64
ARCHITECTURES = ("micro", "tiny", "vit_b_32", "vit_b_16")
# The MLP activation of every block. No state dict records it, and both kinds of released CLIP have
# the same keys and shapes: OpenAI's were trained with QuickGELU, open_clip's LAION / DataComp
# models with exact GELU. The wrong one loads without a word and gives wrong features.
Activation = Literal["quick_gelu", "gelu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)


@dataclass(frozen=True)
class VisionConfig:
    """The numbers that define a ViT image tower (and so the audio encoder built like it)."""

    image_resolution: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int
    activation: Activation = "quick_gelu"


@dataclass(frozen=True)
class CLIPConfig:
    """The numbers that define a ViT CLIP; everything else follows from them."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_heads: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int
    activation: Activation = "quick_gelu"

    @property
    def vision(self) -> VisionConfig:
        return VisionConfig(
            image_resolution=self.image_resolution,
            patch_size=self.vision_patch_size,
            width=self.vision_width,
            layers=self.vision_layers,
            heads=self.vision_heads,
            output_dim=self.embed_dim,
            activation=self.activation,
        )

    def shape(self) -> CLIPConfig:
        """The tensor shapes alone (activation set to the default): what a state dict can tell."""
        return dataclasses.replace(self, activation="quick_gelu")

    @classmethod
    def named(cls, arch: str) -> CLIPConfig:
        """``"vit_b_32"``, ``"vit_b_16"``, ``"tiny"`` or ``"micro"``."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
        return getattr(cls, arch)()

    def name(self) -> str | None:
        """The named architecture whose shapes this config has (any activation), or None."""
        return next((arch for arch in ARCHITECTURES if getattr(CLIPConfig, arch)() == self.shape()), None)

    @classmethod
    def vit_b_32(cls) -> CLIPConfig:
        return cls(512, 224, 12, 768, 12, 32, 77, 49408, 512, 8, 12)

    @classmethod
    def vit_b_16(cls) -> CLIPConfig:
        return cls(512, 224, 12, 768, 12, 16, 77, 49408, 512, 8, 12)

    @classmethod
    def tiny(cls) -> CLIPConfig:
        """A CPU-trainable model with the real input geometry (224 px, 32 px patches, 77 tokens).

        Keeping 224/32 means frames and 224x224 audio segments go through exactly the code path
        of ViT-B/32 (49 patches + CLS + type token); only width and depth shrink, far enough that
        the synthetic quick start trains all three towers on a 2-core CPU in minutes. Heads follow
        the 64-wide rule so ``from_state_dict`` recovers this config from its own checkpoints.
        """
        return cls(
            embed_dim=128,
            image_resolution=224,
            vision_layers=2,
            vision_width=128,
            vision_heads=128 // HEAD_WIDTH,
            vision_patch_size=32,
            context_length=77,
            vocab_size=49408,
            transformer_width=128,
            transformer_heads=128 // HEAD_WIDTH,
            transformer_layers=2,
        )

    @classmethod
    def micro(cls) -> CLIPConfig:
        """The smallest model with the real input geometry: for tests of the training machinery.

        The embedding is as wide as the text tower (as in every OpenAI ViT CLIP), so the fusion
        heads start from CLIP text blocks as they do at full size.
        """
        return cls(
            embed_dim=64,
            image_resolution=224,
            vision_layers=1,
            vision_width=64,
            vision_heads=1,
            vision_patch_size=32,
            context_length=77,
            vocab_size=49408,
            transformer_width=64,
            transformer_heads=1,
            transformer_layers=1,
        )

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "state dict",
                        vision_head_width: int | None = None, text_heads: int | None = None) -> CLIPConfig:
        """Infer the architecture from tensor shapes, as OpenAI's ``build_model`` does.

        ``vision_head_width`` / ``text_heads``: what open_clip's ``open_clip_config.json`` records of
        the heads, which no tensor holds; None: 64-wide heads (:data:`HEAD_WIDTH`).
        Raises :class:`CheckpointError` (naming ``source`` and the key) when a tensor the
        inference needs is missing or has an impossible shape, e.g. a ResNet CLIP or an
        unrelated model, or when a tower cannot be split into the heads it must have.
        """
        foreign = foreign_tower(state)
        if foreign:
            raise CheckpointError(f"{source}: {foreign}")
        if vision_head_width is None:
            width = _shape(state, "visual.conv1.weight", source, ndim=4)[0]
            if width in _NON_64_HEAD_WIDTHS:
                raise CheckpointError(
                    f"{source}: a {width}-wide vision tower ({_NON_64_HEAD_WIDTHS[width]} in open_clip) has attention "
                    "heads that are not 64 wide; their number is in no tensor, so a plain state dict of it does not load"
                )
        vision = infer_vision_config(state, "visual.", extra_positions=0, source=source, head_width=vision_head_width)
        text_width = _shape(state, "ln_final.weight", source, ndim=1)[0]
        context_length, pos_width = _shape(state, "positional_embedding", source, ndim=2)
        vocab_size, tok_width = _shape(state, "token_embedding.weight", source, ndim=2)
        proj_in, embed_dim = _shape(state, "text_projection", source, ndim=2)
        for key, width in (("positional_embedding", pos_width), ("token_embedding.weight", tok_width),
                           ("text_projection", proj_in)):
            if width != text_width:
                raise CheckpointError(
                    f"{source}: {key} has width {width} but ln_final.weight has {text_width}"
                )
        if vision.output_dim != embed_dim:
            raise CheckpointError(f"{source}: visual.proj outputs {vision.output_dim} but text_projection {embed_dim}")
        return cls(
            embed_dim=embed_dim,
            image_resolution=vision.image_resolution,
            vision_layers=vision.layers,
            vision_width=vision.width,
            vision_heads=vision.heads,
            vision_patch_size=vision.patch_size,
            context_length=context_length,
            vocab_size=vocab_size,
            transformer_width=text_width,
            transformer_heads=_text_heads(text_width, text_heads, source),
            transformer_layers=_count_blocks(state, "transformer.resblocks.", source),
        )


# Towers that are not OpenAI's ViT layout, told by a key prefix, and why they cannot load: the audio
# encoder is a copy of an OpenAI-layout ViT, and the text side is OpenAI's causal transformer.
_FOREIGN_TOWERS = (
    ("visual.layer1.", "a ResNet CLIP (RN50, RN101, ...): only ViT vision towers load"),
    ("visual.trunk.", "a timm vision tower (ConvNeXt or another timm model inside open_clip): "
                      "only OpenAI-layout ViT towers load"),
    ("visual.blocks.", "an EVA / timm-layout ViT (visual.blocks.*): only OpenAI-layout ViT towers load"),
    ("visual.patch_embed.", "an EVA / timm-layout ViT (visual.patch_embed.*): only OpenAI-layout ViT towers load"),
    ("visual.attn_pool", "an attention-pooled vision tower (CoCa): only CLS-token ViT towers load"),
    ("text.", "a custom text tower (open_clip's CustomTextCLIP: SigLIP, MobileCLIP, Hugging Face text "
              "encoders): only OpenAI's text transformer loads"),
)
# Vision widths of open_clip's ViT-H/14, ViT-g/14 and ViT-bigG/14, whose heads are 80, 88 and 104
# wide: the head count is in no tensor, and the 64-wide rule would silently split them wrongly.
_NON_64_HEAD_WIDTHS = {1280: "ViT-H-14", 1408: "ViT-g-14", 1664: "ViT-bigG-14"}


def foreign_tower(state: Mapping[str, object]) -> str | None:
    """Why a CLIP state dict is not an OpenAI-layout ViT CLIP (None when nothing says so)."""
    for prefix, reason in _FOREIGN_TOWERS:
        if any(k.startswith(prefix) for k in state):
            return f"{reason} (found keys {prefix}*)"
    if any(".ls_1." in k or ".ls_2." in k for k in state):
        return "a ViT with layer scale (ls_1 / ls_2): only OpenAI-layout blocks load"
    return None


def infer_vision_config(
    state: Mapping[str, torch.Tensor], prefix: str, extra_positions: int, source: str, head_width: int | None = None
) -> VisionConfig:
    """Vision-tower numbers from ``{prefix}conv1.weight``, positional table and projection.

    ``extra_positions`` is the number of positional rows beyond CLS + patches (1 for the audio
    encoder's type token), needed to recover the patch grid. ``head_width``: the recorded width of
    a head (None: 64, :data:`HEAD_WIDTH`).
    """
    width, in_ch, patch, patch_w = _shape(state, f"{prefix}conv1.weight", source, ndim=4)
    if in_ch != 3 or patch != patch_w:
        raise CheckpointError(
            f"{source}: {prefix}conv1.weight has shape {(width, in_ch, patch, patch_w)}; "
            "expected [width, 3, patch, patch]"
        )
    rows = _shape(state, f"{prefix}positional_embedding", source, ndim=2)[0]
    grid = round(math.sqrt(max(rows - 1 - extra_positions, 0)))
    if grid < 1 or grid * grid + 1 + extra_positions != rows:
        raise CheckpointError(
            f"{source}: {prefix}positional_embedding has {rows} rows, which is not "
            f"1 + grid**2{f' + {extra_positions}' if extra_positions else ''}"
        )
    proj_in, output_dim = _shape(state, f"{prefix}proj", source, ndim=2)
    if proj_in != width:
        raise CheckpointError(f"{source}: {prefix}proj has {proj_in} input rows, conv1 width {width}")
    return VisionConfig(
        image_resolution=patch * grid,
        patch_size=patch,
        width=width,
        layers=_count_blocks(state, f"{prefix}transformer.resblocks.", source),
        heads=_split(width, head_width, "vision", source),
        output_dim=output_dim,
    )


def _split(width: int, head_width: int | None, tower: str, source: str) -> int:
    """The number of heads of a ``width``-wide tower: ``head_width`` wide as recorded, or (None) 64
    wide. A width that cannot be split so is refused: any other count would be a guess, and a wrong
    one loads into wrong features without an error."""
    if head_width is None:
        if width % HEAD_WIDTH:
            raise CheckpointError(
                f"{source}: the {width}-wide {tower} tower cannot have 64-wide heads, the rule of OpenAI's and LAION's "
                "CLIPs up to ViT-L by which a plain state dict is read (no tensor records the heads; an open_clip hub "
                "folder's open_clip_config.json does)"
            )
        return width // HEAD_WIDTH
    if width % head_width:
        raise CheckpointError(f"{source}: head width {head_width} does not divide the {tower} tower's width {width}")
    return width // head_width


def _text_heads(width: int, recorded: int | None, source: str) -> int:
    """The text tower's heads: the recorded count (open_clip records a count here), else 64-wide heads."""
    if recorded is not None and width % recorded:
        raise CheckpointError(f"{source}: {recorded} heads do not divide the text tower's width {width}")
    return recorded if recorded is not None else _split(width, None, "text", source)


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r} (not an OpenAI ViT CLIP state dict?)")
    value = state[key]
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"{source}: {key} has shape {shape}, expected {ndim} dimensions")
    return tuple(value.shape)


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str, source: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not indices:
        raise CheckpointError(f"{source}: no transformer blocks under {prefix!r}")
    if indices != set(range(len(indices))):
        raise CheckpointError(f"{source}: blocks under {prefix!r} are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


# --------------------------------------------------------------------------- building blocks


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the activation dtype (fp16/bf16 stability)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU; the released weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation_module(activation: str) -> nn.Module:
    """``quick_gelu`` (OpenAI's CLIPs) or ``gelu`` (exact, erf-based: open_clip's LAION / DataComp)."""
    if activation == "quick_gelu":
        return QuickGELU()
    if activation == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {activation!r}; choose one of {list(ACTIVATIONS)}")


# On a CPU in bf16, for sequences as short as CLIP's (50 patches, 77 tokens), two batched matmuls
# and a softmax beat the fused SDPA kernel, whose bf16 backward is slow there: the ViT-B/32
# pre-training step 9 % faster (benchmarks/RESULTS.md, "Pre-training step"). In fp32 the two run
# alike and SDPA keeps less for the backward (it saves no [N, H, L, L] scores: +6 % peak RSS
# measured); in fp16 the scores' gradients overflow the loss scale where SDPA's fp32 accumulators do
# not (tests/test_fp16.py). So those stay on SDPA, as do GPUs and sequences over this many keys.
EXPLICIT_ATTENTION_MAX_KEYS = 256


def _explicit_attention_wins(q: torch.Tensor, k: torch.Tensor, causal: bool, attn_mask: torch.Tensor | None) -> bool:
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16
            and k.shape[-2] <= EXPLICIT_ATTENTION_MAX_KEYS
            and (not causal or q.shape[-2] == k.shape[-2])
            and (attn_mask is None or attn_mask.dtype == torch.bool))


def _attention_by_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                         attn_mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` with SDPA's masking rules (bool mask: True attends; causal: square)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [N, H, Lq, Lk]
    if causal:
        length = q.shape[-2]
        scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Keeping ``in_proj_weight`` / ``in_proj_bias`` / ``out_proj`` lets OpenAI weights load as
    they are, while the math goes through ``scaled_dot_product_attention`` (fused kernels), or for
    bf16 on a CPU with short sequences through explicit matmuls (faster there, see
    ``EXPLICIT_ATTENTION_MAX_KEYS``).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's default init, so random towers start like the reference's
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[N, L, W]`` -> queries, keys, values ``[N, heads, L, W / heads]``."""
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [N, L, 3W]
        q, k, v = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
               attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries ``[N, H, Lq, d]`` over keys/values ``[N, H, Lk, d]`` -> ``[N, Lq, W]`` (output projection applied)."""
        if _explicit_attention_wins(q, k, causal, attn_mask):
            out = _attention_by_matmul(q, k, v, causal, attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)  # [N, H, Lq, d]
        n, heads, length, width = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, length, heads * width))

    def forward(self, x: torch.Tensor, causal: bool = False, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask``: bool, broadcastable to ``[N, heads, L, L]``, True where a query may attend
        to a key (e.g. ``[N, 1, 1, L]`` for key padding); every query must see at least one key."""
        return self.attend(*self.project(x), causal=causal, attn_mask=attn_mask)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, causal: bool = False, activation: str = "quick_gelu") -> None:
        super().__init__()
        self.causal = causal
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", activation_module(activation))  # no parameters: keys unchanged
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=self.causal, attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(
        self, x: torch.Tensor, keys: Callable[[torch.Tensor], torch.Tensor], values: Callable[[torch.Tensor], torch.Tensor],
        attn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on new tokens ``x [N, n, W]`` attending to cached keys and values as well.

        ``keys(k_new)`` / ``values(v_new)`` place the new tokens' keys / values among the cached
        ones (in the order of the uncached sequence, so the sums run in the same order);
        ``attn_mask`` is ``[N, 1, n, K]`` over the result. Returns the block output and the new
        tokens' keys and values ``[N, H, n, d]`` for the cache.
        """
        q, k, v = self.attn.project(self.ln_1(x))
        x = x + self.attn.attend(q, keys(k), values(v), attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x)), k, v


class Transformer(nn.Module):
    """A stack of residual blocks with optional activation checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False,
                 activation: str = "quick_gelu") -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, causal, activation) for _ in range(layers)]
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # recompute activations in backward: memory per block instead of per model
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        return x


# --------------------------------------------------------------------------- towers


class PatchConv(nn.Conv2d):
    """OpenAI's patch convolution (kernel = stride, no padding, no bias), computed as one matmul
    over flattened patches: the same products (summed in another order, within 4e-6 in fp32), and
    its weight gradient is a GEMM, where the CPU's bf16 convolution backward took 16 % of a
    pre-training step (benchmarks/RESULTS.md). Weight layout, parameter name and output
    ``[N, W, g, g]`` are ``nn.Conv2d``'s."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = images.shape
        p = self.kernel_size[0]
        gh, gw = height // p, width // p
        patches = images[..., : gh * p, : gw * p].reshape(n, channels, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        out = F.linear(patches.reshape(n, gh * gw, channels * p * p), self.weight.flatten(1))  # [N, P, W]
        return out.transpose(1, 2).reshape(n, -1, gh, gw)


class VisionTransformer(nn.Module):
    """CLIP's ViT image tower, split into patch embedding, token encoding and the head.

    The split is what the audio encoder needs: it embeds spectrogram patches with
    :meth:`embed_patches`, appends its audio type token, and runs :meth:`forward_features` and
    :meth:`forward_head` on that sequence. ``extra_positions`` adds positional rows after CLS +
    patches (the type token's position); :meth:`embed_patches` only uses the first
    ``1 + num_patches`` rows.
    """

    def __init__(self, config: VisionConfig, extra_positions: int = 0) -> None:
        super().__init__()
        if config.image_resolution % config.patch_size:
            raise ValueError(f"resolution {config.image_resolution} is not a multiple of patch {config.patch_size}")
        self.config = config
        self.input_resolution = config.image_resolution
        self.output_dim = config.output_dim
        self.num_patches = (config.image_resolution // config.patch_size) ** 2
        self.extra_positions = extra_positions
        width = config.width

        scale = width**-0.5
        self.conv1 = PatchConv(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(1 + self.num_patches + extra_positions, width)
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, activation=config.activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.output_dim))

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, R, R]`` -> ``[N, 1 + P, W]``: patches, CLS prepended, positions added."""
        if images.dim() != 4 or images.shape[1:] != (3, self.input_resolution, self.input_resolution):
            raise ValueError(
                f"expected images [N, 3, {self.input_resolution}, {self.input_resolution}], "
                f"got {tuple(images.shape)}"
            )
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [N, W, g, g]
        x = x.flatten(2).transpose(1, 2)  # [N, P, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)  # [N, 1 + P, W]
        return x + self.positional_embedding[: 1 + self.num_patches].to(x.dtype)

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, S, W]`` embedded token sequence (CLS first) -> ``[N, S, W]`` encoded tokens."""
        return self.transformer(self.ln_pre(tokens))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, S, W]`` encoded tokens -> ``[N, D]`` projected CLS."""
        x = self.ln_post(features[:, 0, :])  # [N, W]
        return x @ self.proj.to(x.dtype)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, S, W]`` token sequence (CLS first) -> ``[N, D]`` projected CLS."""
        return self.forward_head(self.forward_features(tokens))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_tokens(self.embed_patches(images))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable


class TextTransformer(nn.Module):
    """CLIP's causal text tower; the feature is ``ln_final`` at the first EOT, projected.

    Attribute names are OpenAI's top-level keys, so :class:`CLIP` subclasses this tower instead
    of nesting it (nesting would add a ``text.`` prefix to every checkpoint key).
    """

    def __init__(
        self, context_length: int, vocab_size: int, width: int, layers: int, heads: int, output_dim: int,
        activation: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, causal=True, activation=activation)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self._init_text_parameters()

    def _init_text_parameters(self) -> None:
        """OpenAI's initialisation of the text tower (used only for random models)."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, S]`` token ids (S <= context_length) -> ``[N, S, W]`` after ``ln_final``.

        Positions use rows ``[:S]`` so shorter sequences (max_words 32) work; attention is causal,
        so token ``i`` only sees tokens ``<= i`` (what the caption generator's prefix needs).
        """
        context_length = self.positional_embedding.shape[0]
        if tokens.dim() != 2 or tokens.shape[1] > context_length:
            raise ValueError(f"expected tokens [N, S] with S <= {context_length}, got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens.long())  # [N, S, W]
        x = x + self.positional_embedding[: tokens.shape[1]].to(x.dtype)
        x = self.transformer(x)
        return self.ln_final(x)

    def forward_head(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, S, W]`` features -> ``[N, D]`` projected feature at the first EOT.

        ``argmax`` finds the first EOT because 49407 is the largest id, as OpenAI.
        """
        eot = tokens.argmax(dim=-1)
        x = features[torch.arange(features.shape[0], device=features.device), eot]  # [N, W]
        return x @ self.text_projection.to(x.dtype)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, S]`` token ids -> ``[N, D]`` unnormalised global text feature."""
        return self.forward_head(self.forward_features(tokens), tokens)

    def forward_features_cached(
        self, tokens: torch.Tensor, cache: list[tuple[torch.Tensor, torch.Tensor]] | None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Features of new tokens ``[N, n]`` that follow the prefix a cache holds; ``[N, n, W]``.

        ``cache``: per block the prefix's keys and values ``[N, H, t, d]`` (None: no prefix).
        Returns the features after ``ln_final`` and the cache extended by the new tokens, so that
        decoding runs each token through the tower once (equal to :meth:`forward_features` on the
        whole prefix, up to float rounding).
        """
        past = 0 if cache is None else cache[0][0].shape[2]
        n = tokens.shape[1]
        if past + n > self.positional_embedding.shape[0]:
            raise ValueError(f"{past + n} tokens exceed the {self.positional_embedding.shape[0]} text positions")
        x = self.token_embedding(tokens.long()) + self.positional_embedding[past:past + n].to(self.token_embedding.weight.dtype)
        visible = torch.ones(n, past + n, dtype=torch.bool, device=tokens.device).tril(diagonal=past)  # causal
        new_cache = []
        for i, block in enumerate(self.transformer.resblocks):
            pk, pv = (None, None) if cache is None else cache[i]
            x, k, v = block.forward_cached(
                x, (lambda k_: k_) if pk is None else (lambda k_, pk=pk: torch.cat([pk, k_], dim=2)),
                (lambda v_: v_) if pv is None else (lambda v_, pv=pv: torch.cat([pv, v_], dim=2)),
                visible[None, None],
            )
            new_cache.append((k if pk is None else torch.cat([pk, k], dim=2), v if pv is None else torch.cat([pv, v], dim=2)))
        return self.ln_final(x), new_cache

    def encode_text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, S]`` token ids -> (``[N, S, D]`` every token projected, ``[N, D]`` global).

        The per-token features are what the G2L/L2L fusion and the caption generator read; the
        global one is the same value :meth:`encode_text` returns, from one pass.
        """
        features = self.forward_features(tokens)  # [N, S, W]
        return features @ self.text_projection.to(features.dtype), self.forward_head(features, tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_text(tokens)


class CLIP(TextTransformer):
    """Image-text CLIP: the text tower (top-level keys) plus ``visual`` and ``logit_scale``."""

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(
            context_length=config.context_length,
            vocab_size=config.vocab_size,
            width=config.transformer_width,
            layers=config.transformer_layers,
            heads=config.transformer_heads,
            output_dim=config.embed_dim,
            activation=config.activation,
        )
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, R, R]`` normalised images -> ``[N, D]`` unnormalised projected CLS."""
        return self.visual(images)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img])``."""
        image = F.normalize(self.encode_image(images), dim=-1)
        text = F.normalize(self.encode_text(tokens), dim=-1)
        logits_per_image = self.logit_scale.exp() * image @ text.t()
        return logits_per_image, logits_per_image.t()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable
        self.visual.set_grad_checkpointing(enable)


# --------------------------------------------------------------------------- loading


def load_openai_clip(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor], device: str | torch.device = "cpu",
    activation: str = "quick_gelu",
) -> CLIP:
    """Build a float32, eval-mode :class:`CLIP` from an OpenAI checkpoint.

    Accepts OpenAI's TorchScript archives (only their state dict is read), plain ``torch.save``
    state dicts (read with ``weights_only=True``) or an in-memory state dict. Unlike OpenAI's
    ``clip.load`` the weights are not rounded to fp16 first: fp32 files load exactly, fp16
    archives are widened. The model is built on the ``meta`` device and the checkpoint tensors
    are assigned to it (fp16 entries are widened one by one), so a file-loaded checkpoint never
    exists twice: peak RSS growth ~1.2x the fp32 weight size for fp32, fp16 and archive files
    (``benchmarks/clip_load_memory.py``). An in-memory dict is copied (the model must not alias
    the caller's tensors). Any mismatch raises :class:`CheckpointError`; nothing loads partially.
    ``activation``: OpenAI's QuickGELU by default; ``"gelu"`` for open_clip's LAION / DataComp weights
    (same keys and shapes: see :data:`Activation`).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {list(ACTIVATIONS)}")
    if isinstance(path_or_state_dict, Mapping):
        source = "state dict"
        state = to_float32_state_dict(path_or_state_dict, source, owned=False)
    else:
        source = str(path_or_state_dict)
        state = to_float32_state_dict(read_state_dict(path_or_state_dict), source, owned=True)

    config = dataclasses.replace(CLIPConfig.from_state_dict(state, source), activation=activation)
    return clip_with_weights(config, state, source).to(device)


def clip_with_weights(config: CLIPConfig, state: dict[str, torch.Tensor], source: str) -> CLIP:
    """An eval-mode :class:`CLIP` of ``config`` whose parameters are ``state``'s float32 tensors
    (assigned, not copied: the caller hands them over). Every key, shape and dtype is checked
    first, naming ``source``; nothing loads partially."""
    try:
        with torch.device("meta"):
            model = CLIP(config)
    except ValueError as err:
        raise CheckpointError(f"{source}: architecture {config} is invalid: {err}") from err
    check_state_dict(state, model.state_dict(), source)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
