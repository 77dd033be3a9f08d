"""The Multimodal Caption Generator (paper §3.4): next-word prediction over text, frames and audio.

The caption prefix ``[SOT] + words`` goes through the CLIP text tower (causal) into per-token
features; ``[prefix ; frames ; audio segments]`` go through a 4-layer fusion transformer (CLIP
text-block shape, initialised from CLIP text blocks 0-3 and the text positional table; type
embeddings 0/1/2) with this mask:

* a text row sees the earlier text (causal) and every valid frame and segment;
* a frame / segment row sees every valid frame and segment, and no text.

The text rows' outputs go through ``Linear(D, D) -> QuickGELU -> LayerNorm`` and the transposed
CLIP token embedding (tied, so the vocabulary shares CLIP's word vectors) plus a bias: the
next-word logits.

Positions are fixed: text rows take positions ``0 .. max_words-1`` and frames / segments always
start at ``max_words``, in training and in decoding alike. Because no frame or segment row sees
the text, its hidden states do not change while a caption grows: decoding computes them once
per video and caches every layer's keys and values (:meth:`CaptionGenerator.start`); a decoding
step then runs only the new token through the text tower and the fusion layers
(:meth:`CaptionGenerator.step`). The uncached path (:meth:`CaptionGenerator.forward` on the whole
prefix) computes the same logits; ``clip4vla.evaluation.decoding`` uses either.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clip4vla.models.clip import CLIP, CLIPConfig, LayerNorm, QuickGELU
from clip4vla.models.fusion import TYPE_IDS, FusionTransformer, item_types

__all__ = ["GeneratorConfig", "CaptionGenerator", "CaptionState", "build_caption_head"]


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    layers: int = 4
    width: int = 512
    heads: int = 8
    max_words: int = 32
    max_positions: int = 77
    vocab_size: int = 49408


@dataclasses.dataclass
class CaptionState:
    """What decoding carries from step to step (one row per video x beam)."""

    items: list[tuple[torch.Tensor, torch.Tensor]]  # per fusion layer: frames+segments keys, values [N, H, I, d]
    item_mask: torch.Tensor  # [N, I]
    text: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per fusion layer: prefix keys, values
    tower: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per CLIP text block: prefix keys, values

    def select(self, rows: torch.Tensor) -> CaptionState:
        """The state of rows ``rows`` (beam search keeps and reorders hypotheses)."""
        pick = lambda pairs: None if pairs is None else [(k[rows], v[rows]) for k, v in pairs]  # noqa: E731
        return CaptionState(pick(self.items), self.item_mask[rows], pick(self.text), pick(self.tower))


class CaptionGenerator(nn.Module):
    """Fusion transformer + prediction head tied to the CLIP token embedding (module docstring)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.max_words >= config.max_positions:
            raise ValueError(f"max_words {config.max_words} leaves no position for frames and audio")
        self.config = config
        self.fusion = FusionTransformer(config.width, config.layers, config.heads, config.max_positions)
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(config.width, config.width))
        self.transform.add_module("act", QuickGELU())
        self.transform.add_module("LayerNorm", LayerNorm(config.width))
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    @classmethod
    def from_clip(cls, clip: CLIP, max_words: int, layers: int = 4) -> CaptionGenerator:
        head = cls(cls.config_for(clip.config, max_words, layers))
        head.fusion.init_from_text_tower(clip)
        return head.to(clip.positional_embedding.device)

    @staticmethod
    def config_for(clip_config: CLIPConfig, max_words: int, layers: int) -> GeneratorConfig:
        """The generator a model of ``clip_config`` gets for captions of ``max_words`` tokens."""
        return GeneratorConfig(layers=layers, width=clip_config.embed_dim, heads=max(1, clip_config.embed_dim // 64),
                               max_words=max_words, max_positions=clip_config.context_length,
                               vocab_size=clip_config.vocab_size)

    def architecture(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    # ------------------------------------------------------------------ pieces

    def _item_layout(self, frame_mask: torch.Tensor, segment_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Types ``[N, I]``, positions ``[I]`` and mask ``[N, I]`` of the frames and segments."""
        types = item_types(frame_mask, segment_mask)
        n_items = types.shape[1]
        positions = torch.arange(self.config.max_words, self.config.max_words + n_items, device=types.device)
        return types, positions, torch.cat([frame_mask, segment_mask], dim=1)

    def logits(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` text-row outputs -> ``[..., vocab]`` next-word logits (tied weights)."""
        return F.linear(self.transform(hidden), token_embedding.to(hidden.dtype)) + self.bias.to(hidden.dtype)

    # ------------------------------------------------------------------ teacher forcing

    def forward(
        self,
        text: torch.Tensor,  # [N, S, D] projected token features of the prefix (causal text tower)
        text_mask: torch.Tensor,  # [N, S] real tokens
        frames: torch.Tensor,  # [N, F, D]
        frame_mask: torch.Tensor,  # [N, F]
        segments: torch.Tensor,  # [N, L, D]
        segment_mask: torch.Tensor,  # [N, L]
        token_embedding: torch.Tensor,  # [vocab, D]
    ) -> torch.Tensor:
        """Next-word logits ``[N, S, vocab]`` for every prefix position, in one pass (training)."""
        n, s = text_mask.shape
        if s > self.config.max_words:
            raise ValueError(f"prefix of {s} tokens is longer than max_words={self.config.max_words}")
        types, item_positions, item_mask = self._item_layout(frame_mask, segment_mask)
        i = item_mask.shape[1]
        x = torch.cat([text, frames.to(text.dtype), segments.to(text.dtype)], dim=1)
        all_types = torch.cat([torch.full_like(text_mask, TYPE_IDS["text"], dtype=torch.long), types], dim=1)
        positions = torch.cat([torch.arange(s, device=x.device), item_positions])
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        allowed = torch.zeros(n, s + i, s + i, dtype=torch.bool, device=x.device)
        allowed[:, :s, :s] = causal & text_mask[:, None, :]  # text rows: earlier real text
        allowed[:, :, s:] = item_mask[:, None, :]  # every row: the valid frames and segments
        allowed[:, s:, :s] = False  # frame / segment rows: no text
        allowed |= torch.eye(s + i, dtype=torch.bool, device=x.device)  # padding rows see themselves (never NaN)
        hidden = self._run(x, all_types, positions, allowed[:, None])
        return self.logits(hidden[:, :s], token_embedding)

    def _run(self, x: torch.Tensor, types: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        fusion = self.fusion
        x = x + fusion.positional_embedding[positions].to(x.dtype) + fusion.token_type_embeddings(types).to(x.dtype)
        return fusion.transformer(x, attn_mask=allowed)

    # ------------------------------------------------------------------ incremental decoding

    def start(self, frames: torch.Tensor, frame_mask: torch.Tensor, segments: torch.Tensor,
              segment_mask: torch.Tensor) -> CaptionState:
        """Run the frames and segments through every layer once; cache their keys and values."""
        fusion = self.fusion
        types, positions, item_mask = self._item_layout(frame_mask, segment_mask)
        x = torch.cat([frames, segments], dim=1)
        x = x + fusion.positional_embedding[positions].to(x.dtype) + fusion.token_type_embeddings(types).to(x.dtype)
        i = item_mask.shape[1]
        allowed = (item_mask[:, None, :] | torch.eye(i, dtype=torch.bool, device=x.device))[:, None]
        cache = []
        for block in fusion.transformer.resblocks:
            x, k, v = block.forward_cached(x, lambda k_: k_, lambda v_: v_, allowed)
            cache.append((k, v))
        return CaptionState(items=cache, item_mask=item_mask)

    def step(self, text: torch.Tensor, state: CaptionState, token_embedding: torch.Tensor) -> tuple[torch.Tensor, CaptionState]:
        """Logits ``[N, n, vocab]`` of new prefix tokens ``text [N, n, D]``; the state grows by them.

        Keys are laid out as in :meth:`forward` (earlier text, new text, then frames and
        segments), so cached and uncached decoding sum in the same order.
        """
        fusion = self.fusion
        n_new = text.shape[1]
        past = 0 if state.text is None else state.text[0][0].shape[2]
        if past + n_new > self.config.max_words:
            raise ValueError(f"a caption of {past + n_new} tokens is longer than max_words={self.config.max_words}")
        types = torch.full(text.shape[:2], TYPE_IDS["text"], dtype=torch.long, device=text.device)
        x = text + fusion.positional_embedding[past:past + n_new].to(text.dtype) + fusion.token_type_embeddings(types).to(text.dtype)
        causal = torch.ones(n_new, past + n_new, dtype=torch.bool, device=text.device).tril(diagonal=past)
        allowed = torch.cat([causal[None].expand(text.shape[0], -1, -1),
                             state.item_mask[:, None, :].expand(-1, n_new, -1)], dim=2)[:, None]
        new_text = []
        for layer, block in enumerate(fusion.transformer.resblocks):
            item_k, item_v = state.items[layer]
            pk, pv = (None, None) if state.text is None else state.text[layer]
            joined = lambda new, past_, items: torch.cat(([past_] if past_ is not None else []) + [new, items], dim=2)  # noqa: E731
            x, k, v = block.forward_cached(x, lambda k_: joined(k_, pk, item_k), lambda v_: joined(v_, pv, item_v), allowed)
            new_text.append((k if pk is None else torch.cat([pk, k], dim=2), v if pv is None else torch.cat([pv, v], dim=2)))
        return self.logits(x, token_embedding), CaptionState(state.items, state.item_mask, new_text, state.tower)


def build_caption_head(architecture: Mapping[str, Any], clip_config: CLIPConfig) -> CaptionGenerator:
    """Rebuild a stored caption head (``clip4vla.models.heads``)."""
    return CaptionGenerator(GeneratorConfig(**dict(architecture)))
