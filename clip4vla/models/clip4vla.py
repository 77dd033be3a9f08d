"""The tri-encoder: CLIP's text and vision towers plus the audio encoder.

This module only encodes; similarities, fusion and the temperature belong to the losses and
heads (``logit_scale`` stays inside ``clip`` only because OpenAI checkpoints carry it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from clip4vla.models.audio import AudioEncoder, AudioType
from clip4vla.models.clip import CLIP, CLIPConfig
from clip4vla.models.pooling import encode_valid, masked_mean_normalised
from clip4vla.models.preprocessing import Preprocessing

__all__ = ["AUDIO_INITS", "CLIP4VLA"]

AUDIO_INITS = ("vision", "scratch")


class CLIP4VLA(nn.Module):
    """Text, video and audio encoders sharing one embedding space.

    Global features: text = projected EOT (unnormalised), video and audio = unit-norm masked
    mean of unit-norm frame / segment features.
    """

    def __init__(self, clip: CLIP, audio: AudioEncoder) -> None:
        super().__init__()
        if audio.output_dim != clip.config.embed_dim:
            raise ValueError(
                f"audio encoder outputs {audio.output_dim} dims but CLIP embeds to {clip.config.embed_dim}"
            )
        self.clip = clip
        self.audio = audio
        # Task heads (retrieval fusion, caption generator) that fine-tuning adds; saved with the
        # weights under "heads.<name>." and rebuilt by load_model from the file's architecture.
        self.heads = nn.ModuleDict()
        self.clip_frozen = False
        # How media become inputs for these weights (set by load_model and by the trainer).
        self.preprocessing: Preprocessing | None = None

    def attach_head(self, name: str, head: nn.Module) -> None:
        """Add a task head; it must describe itself with ``architecture() -> dict`` for model files."""
        if not callable(getattr(head, "architecture", None)):
            raise TypeError(f"head {name!r} ({type(head).__name__}) has no architecture() method")
        self.heads[name] = head

    @classmethod
    def from_clip(cls, clip: CLIP, audio_init: str = "vision", use_type_token: bool = True) -> CLIP4VLA:
        """Add an audio encoder to a CLIP: copied from its vision tower (paper) or random."""
        if audio_init == "vision":
            audio = AudioEncoder.from_vision(clip.visual, use_type_token=use_type_token)
        elif audio_init == "scratch":
            audio = AudioEncoder.scratch(clip.config, use_type_token=use_type_token).to(clip.visual.proj.device)
        else:
            raise ValueError(f"audio_init must be one of {AUDIO_INITS}, got {audio_init!r}")
        return cls(clip, audio)

    @classmethod
    def from_config(
        cls, clip_config: CLIPConfig, audio_init: str = "vision", use_type_token: bool = True
    ) -> CLIP4VLA:
        """Random CLIP of the given shape (e.g. ``CLIPConfig.tiny()`` for CPU runs) plus audio."""
        return cls.from_clip(CLIP(clip_config), audio_init, use_type_token)

    # ------------------------------------------------------------------ training switches

    def freeze_clip(self, freeze: bool = True) -> None:
        """Freeze the text and vision towers (paper: only the audio encoder is trained).

        Frozen towers also run under ``torch.no_grad()``, which saves their activations.
        """
        self.clip_frozen = freeze
        for param in self.clip.parameters():
            param.requires_grad_(not freeze)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)
        self.audio.set_grad_checkpointing(enable)

    def tower_blocks(self) -> list[nn.Module]:
        """The transformer blocks of the text, vision and audio towers, in that order: the units that
        FSDP shards and ``train.compile`` compiles (the towers' weight and compute sit there)."""
        towers = (self.clip.transformer, self.clip.visual.transformer, self.audio.visual.transformer)
        return [block for tower in towers for block in tower.resblocks]

    def _clip_context(self) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.clip_frozen else contextlib.nullcontext()

    # ------------------------------------------------------------------ encoders

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, S]`` token ids (S = 77 or max_words) -> ``[B, D]`` unnormalised text feature."""
        with self._clip_context():
            return self.clip.encode_text(tokens)

    def encode_text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, S]`` token ids -> (``[B, S, D]`` per-token features, ``[B, D]`` global), one pass.

        Padding positions hold features too (causal attention never lets them reach real
        tokens); callers mask them with ``tokens != 0``.
        """
        with self._clip_context():
            return self.clip.encode_text_tokens(tokens)

    def encode_video(
        self, frames: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F, 3, H, W]`` frames + ``[B, F]`` mask -> (``[B, F, D]`` frame features, ``[B, D]`` global).

        All valid frames of the batch go through the vision tower in one call; padded frames
        are not encoded and read as zeros.
        """
        if frames.dim() != 5 or frame_mask.shape != frames.shape[:2]:
            raise ValueError(
                f"expected frames [B, F, 3, H, W] and frame_mask [B, F], got {tuple(frames.shape)} "
                f"and {tuple(frame_mask.shape)}"
            )
        with self._clip_context():
            features = encode_valid(self.clip.encode_image, frames, frame_mask, self.clip.config.embed_dim)
        return features, masked_mean_normalised(features, frame_mask)

    def encode_audio(
        self, segments: torch.Tensor, mask: torch.Tensor, audio_type: AudioType
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L, 3, 224, 224]`` segments + ``[B, L]`` mask -> (``[B, L, D]``, ``[B, D]`` global)."""
        return self.audio(segments, mask, audio_type)

    def encode_media(
        self,
        frames: torch.Tensor,  # [B, F, 3, H, W]
        frame_mask: torch.Tensor,  # [B, F]
        audio: torch.Tensor,  # [B, L, 3, 224, 224]
        audio_mask: torch.Tensor,  # [B, L]
        audio_type: AudioType,
        modality: str = "av",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip's two streams item by item: frame features ``[B, F, D]`` and segment features ``[B, L, D]``.

        The stream ``modality`` leaves out ("v": the audio, "a": the frames) is not encoded and
        reads as zeros, so fusion heads and the caption generator see one layout whatever the
        modality (their masks say which items count).
        """
        dim = self.clip.config.embed_dim
        if modality == "a":
            frame_features = frames.new_zeros(*frame_mask.shape, dim)
        else:
            frame_features = self.encode_video(frames, frame_mask)[0]
        if modality == "v":
            segment_features = audio.new_zeros(*audio_mask.shape, dim)
        else:
            segment_features = self.encode_audio(audio, audio_mask, audio_type)[0]
        return frame_features, segment_features

    def fusion_text(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, S]`` token ids -> the text side the fusion head compares (one text-tower pass)."""
        if "fusion" not in self.heads:
            raise ValueError("the model has no fusion head (fine-tune it for retrieval first)")
        return self.heads["fusion"].text_side(tokens, *self.encode_text_tokens(tokens))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)
