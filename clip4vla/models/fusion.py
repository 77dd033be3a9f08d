"""Retrieval fusion heads (paper Fig. 3): text against video *and* audio, three ways.

* **G2G** (global to global): ``S = s · t · ((v + a) / 2)ᵀ`` on unit global features; the average
  of the two unit vectors is not re-normalised (REF). No parameters.
* **G2L** (global to local, REF's MSR-VTT/VATEX setting): the frame and audio-segment features
  (before normalisation) go through a 4-layer transformer together (the "video temporal
  encoding module"), are split back and pooled as G2G.
* **L2L** (local to local): every (text, video) pair's ``[text tokens ; frames ; segments]`` goes
  through the same kind of transformer; the output at the first position, through
  ``Linear(D, 1)``, times ``s`` is the pair's score. Computed in chunks of pairs, so memory stays
  bounded however many pairs are scored.

The transformer (:class:`FusionTransformer`) has CLIP's text-block shape (pre-LN, QuickGELU,
width = the embedding width), starts from CLIP text blocks 0-3 and the text positional table, adds
type embeddings (0 text, 1 video, 2 audio; random) and has no final LayerNorm. Its parameter names
follow the released code's ``cross`` module, so released heads convert by renaming.

Modalities: ``"v"`` (vision only), ``"a"`` (audio only), ``"av"``. A clip without audio (empty
segment mask) is scored with vision alone in ``"av"``: the paper pairs silent videos with another
video's audio (``scripts/pair_missing_audio.py``); without such a pairing vision is all there is.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from clip4vla.models.clip import CLIP, CLIPConfig, Transformer
from clip4vla.models.pooling import masked_mean_normalised

log = logging.getLogger(__name__)

__all__ = ["FUSION_MODES", "MODALITIES", "FusionConfig", "FusionHead", "FusionTransformer", "TYPE_IDS", "has_modality", "item_types",
           "select_modality"]

FUSION_MODES = ("g2g", "g2l", "l2l")
MODALITIES = ("v", "a", "av")
TYPE_IDS = {"text": 0, "video": 1, "audio": 2}
# pairs per forward of the L2L transformer: bounds activation memory at [chunk, S + F + L, D]
L2L_PAIR_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    mode: str = "g2g"
    layers: int = 4
    width: int = 512
    heads: int = 8
    max_positions: int = 77

    def __post_init__(self) -> None:
        if self.mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {self.mode!r}")


class FusionTransformer(nn.Module):
    """Positional + type embeddings, then CLIP-shaped blocks with a padding mask; no final LayerNorm."""

    def __init__(self, width: int, layers: int, heads: int, max_positions: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(max_positions, width))
        self.token_type_embeddings = nn.Embedding(len(TYPE_IDS), width)
        self.transformer = Transformer(width, layers, heads)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.token_type_embeddings.weight, std=0.02)

    def forward(self, x: torch.Tensor, types: torch.Tensor, mask: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, L, D]``, ``types [N, L]`` (0/1/2), ``mask [N, L]`` bool (True = real) -> ``[N, L, D]``.

        ``positions`` ``[L]``: the positional rows of the tokens (default ``0..L-1``); L2L leaves
        out trailing text padding but keeps every other token at its place.
        """
        rows = self.positional_embedding.shape[0]
        if positions is None:
            if x.shape[1] > rows:
                raise ValueError(f"fusion sequence of {x.shape[1]} tokens is longer than {rows} positions")
            position = self.positional_embedding[: x.shape[1]]
        else:
            if int(positions.max()) >= rows:
                raise ValueError(f"fusion position {int(positions.max())} is beyond the {rows} positions")
            position = self.positional_embedding[positions]
        x = x + position.to(x.dtype) + self.token_type_embeddings(types).to(x.dtype)
        # a sequence with nothing real in it (a silent clip in audio-only mode) attends to all of
        # its padding rather than to nothing (which would be NaN); its output is never used
        keys = mask | ~mask.any(dim=1, keepdim=True)
        return self.transformer(x, attn_mask=keys[:, None, None, :])

    @torch.no_grad()
    def init_from_text_tower(self, clip: CLIP) -> int:
        """Copy CLIP text blocks 0.. and the text positional rows; the number of blocks copied.

        Raises ``ValueError`` when the widths differ (no block could be copied).
        """
        width = self.positional_embedding.shape[1]
        if clip.config.transformer_width != width:
            raise ValueError(f"fusion width {width} differs from the CLIP text width {clip.config.transformer_width}")
        copied = 0
        for block, source in zip(self.transformer.resblocks, clip.transformer.resblocks):
            block.load_state_dict(source.state_dict())
            copied += 1
        rows = min(self.positional_embedding.shape[0], clip.positional_embedding.shape[0])
        self.positional_embedding[:rows] = clip.positional_embedding[:rows]
        return copied


def _pool_av(frames: torch.Tensor, frame_mask: torch.Tensor, segments: torch.Tensor, segment_mask: torch.Tensor,
             modality: str) -> torch.Tensor:
    """G2G pooling of one side: unit video, unit audio, or their average (vision alone without audio)."""
    video = masked_mean_normalised(frames, frame_mask)  # [B, D]
    if modality == "v":
        return video
    audio = masked_mean_normalised(segments, segment_mask)
    if modality == "a":
        return audio
    has_audio = segment_mask.any(dim=1, keepdim=True)
    return torch.where(has_audio, (video + audio) / 2, video)


def has_modality(frame_mask: torch.Tensor, segment_mask: torch.Tensor, modality: str) -> torch.Tensor:
    """Which clips can take part in ``modality`` (bool ``[B]``): "v" needs frames, "a" an audio
    track, "av" either (a silent clip is scored with vision alone)."""
    has_frames, has_audio = frame_mask.any(1), segment_mask.any(1)
    return {"v": has_frames, "a": has_audio, "av": has_frames | has_audio}[modality]


def item_types(frame_mask: torch.Tensor, segment_mask: torch.Tensor) -> torch.Tensor:
    """Token-type ids ``[B, F + L]`` of frames followed by segments: the fusion transformer's layout
    for the video side (G2L, L2L, caption generator)."""
    return torch.cat([torch.full_like(frame_mask, TYPE_IDS["video"], dtype=torch.long),
                      torch.full_like(segment_mask, TYPE_IDS["audio"], dtype=torch.long)], dim=1)


def select_modality(frame_mask: torch.Tensor, segment_mask: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks with the modality that is left out switched off."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if modality == "v":
        segment_mask = torch.zeros_like(segment_mask)
    elif modality == "a":
        frame_mask = torch.zeros_like(frame_mask)
    return frame_mask, segment_mask


class FusionHead(nn.Module):
    """One of G2G / G2L / L2L: turns per-item features into text-video similarities.

    The three steps every user of the head takes (training loss, evaluation, search):
    :meth:`text_side` and :meth:`video_side` turn encoder outputs into what the mode compares,
    :meth:`similarity` scores every text against every video.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.fusion = None
        if config.mode in ("g2l", "l2l"):
            self.fusion = FusionTransformer(config.width, config.layers, config.heads, config.max_positions)
        if config.mode == "l2l":
            self.similarity_dense = nn.Linear(config.width, 1)

    @classmethod
    def from_clip(cls, clip: CLIP, mode: str, layers: int = 4) -> FusionHead:
        """A head of ``clip``'s shape, its transformer initialised from CLIP's text blocks."""
        head = cls(cls.config_for(clip.config, mode, layers))
        if head.fusion is not None:
            copied = head.fusion.init_from_text_tower(clip)
            if copied < layers:  # small test models have fewer text blocks than the head
                log.warning("%s fusion: %d of %d blocks start from CLIP text blocks, the rest are random",
                            mode, copied, layers)
        return head.to(clip.positional_embedding.device)

    @staticmethod
    def config_for(clip_config: CLIPConfig, mode: str, layers: int) -> FusionConfig:
        """The head a model of ``clip_config`` gets for ``mode`` with ``layers`` blocks."""
        return FusionConfig(mode=mode, layers=layers, width=clip_config.embed_dim,
                            heads=max(1, clip_config.embed_dim // 64), max_positions=clip_config.context_length)

    def architecture(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def mode(self) -> str:
        return self.config.mode

    # ------------------------------------------------------------------ sides

    def text_side(self, tokens: torch.Tensor, token_features: torch.Tensor, text_global: torch.Tensor) -> dict[str, torch.Tensor]:
        """From ``encode_text_tokens``: unit global features (G2G/G2L) or the token sequence (L2L)."""
        if self.mode == "l2l":
            # real tokens run to the first [EOT] (the largest id); 0 pads, but is also the id of "!"
            eot = tokens.argmax(dim=-1, keepdim=True)
            return {"tokens": token_features, "token_mask": torch.arange(tokens.shape[1], device=tokens.device) <= eot}
        if text_global.dtype in (torch.float16, torch.bfloat16):
            text_global = text_global.float()
        return {"text": F.normalize(text_global, dim=-1)}

    def video_side(
        self,
        frames: torch.Tensor,  # [B, F, D] frame features (encode_video)
        frame_mask: torch.Tensor,  # [B, F]
        segments: torch.Tensor,  # [B, L, D] segment features (encode_audio)
        segment_mask: torch.Tensor,  # [B, L]
        modality: str = "av",
    ) -> dict[str, torch.Tensor]:
        """Pooled video vectors (G2G, G2L after the fusion transformer) or the masked items (L2L)."""
        frame_mask, segment_mask = select_modality(frame_mask, segment_mask, modality)
        if self.mode == "l2l":
            return {"frames": frames, "frame_mask": frame_mask, "segments": segments, "segment_mask": segment_mask}
        if self.mode == "g2l":
            n_frames = frames.shape[1]
            types = item_types(frame_mask, segment_mask)
            mask = torch.cat([frame_mask, segment_mask], dim=1)
            fused = self.fusion(torch.cat([frames, segments], dim=1), types, mask)  # [B, F + L, D]
            frames, segments = fused[:, :n_frames], fused[:, n_frames:]
        return {"video": _pool_av(frames, frame_mask, segments, segment_mask, modality)}

    # ------------------------------------------------------------------ scores

    def similarity(self, text: Mapping[str, torch.Tensor], video: Mapping[str, torch.Tensor],
                   scale: torch.Tensor | float, pair_chunk: int = L2L_PAIR_CHUNK) -> torch.Tensor:
        """``[N_text, N_video]`` scores of every text against every video (times the logit scale)."""
        if self.mode != "l2l":
            return scale * (text["text"] @ video["video"].to(text["text"].dtype).t())
        return scale * self._pair_scores(text, video, pair_chunk)

    def _pair_scores(self, text: Mapping[str, torch.Tensor], video: Mapping[str, torch.Tensor], pair_chunk: int) -> torch.Tensor:
        tokens, token_mask = text["tokens"], text["token_mask"]
        n_text, n_video = tokens.shape[0], video["frames"].shape[0]
        items = torch.cat([video["frames"], video["segments"]], dim=1).to(tokens.dtype)  # [V, F + L, D]
        item_mask = torch.cat([video["frame_mask"], video["segment_mask"]], dim=1)
        video_types = item_types(video["frame_mask"], video["segment_mask"])
        text_types = torch.full_like(token_mask, TYPE_IDS["text"], dtype=torch.long)
        texts_per_chunk = max(1, pair_chunk // max(n_video, 1))
        rows = []
        for start in range(0, n_text, texts_per_chunk):
            t = slice(start, min(start + texts_per_chunk, n_text))
            n = t.stop - t.start
            # drop the padding columns no text of the chunk uses (captions are shorter than max_words)
            used = int(token_mask[t].any(dim=0).nonzero().max()) + 1 if token_mask[t].any() else 1
            t_tokens, t_mask, t_types = tokens[t, :used], token_mask[t, :used], text_types[t, :used]
            # every (text, video) pair of the chunk: [n * V, S + F + L, D]
            seq = torch.cat([t_tokens.unsqueeze(1).expand(-1, n_video, -1, -1), items.unsqueeze(0).expand(n, -1, -1, -1)], dim=2)
            types = torch.cat([t_types.unsqueeze(1).expand(-1, n_video, -1), video_types.unsqueeze(0).expand(n, -1, -1)], dim=2)
            mask = torch.cat([t_mask.unsqueeze(1).expand(-1, n_video, -1), item_mask.unsqueeze(0).expand(n, -1, -1)], dim=2)
            positions = torch.cat([torch.arange(used), torch.arange(tokens.shape[1], tokens.shape[1] + items.shape[1])])
            out = self.fusion(seq.flatten(0, 1), types.flatten(0, 1), mask.flatten(0, 1),
                              positions.to(seq.device))  # [n * V, ., D]
            rows.append(self.similarity_dense(out[:, 0]).view(n, n_video))
        return torch.cat(rows, dim=0)


def build_fusion_head(architecture: Mapping[str, Any], clip_config: CLIPConfig) -> FusionHead:
    """Rebuild a stored head (``clip4vla.models.heads``)."""
    return FusionHead(FusionConfig(**dict(architecture)))
