"""The CLIP4VLA audio encoder: a ViT over log-mel segments plus an audio type token.

Each 224x224 segment (3 channels: left, mid, right log-mel) is cut into patches exactly like an
image, ``[CLS] + patches + [TYPE]`` goes through a transformer with the CLIP vision architecture,
and the projected CLS is the segment feature. The type token selects what the encoder listens
for: row 0 of ``type_embedding`` is [VB] (verbal), row 1 is [NB] (non-verbal).

The segments stay 224x224 whatever the image tower's resolution (48, 224, 336 px): the encoder is
built for 224-px inputs and the copied positional table is resampled once to its patch grid, as
AST adapts an ImageNet ViT to spectrograms. Resizing the spectrogram instead would blur (or, at
48 px, throw away) mel bins and time frames, and cost 2.25x the tokens at 336 px; keeping 224 keeps
the front-end's time-frequency resolution, one data pipeline for every backbone, and the
pre-trained patch weights, which see the same 14/16/32-px patches either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from clip4vla.models.clip import CLIPConfig, VisionConfig, VisionTransformer, infer_vision_config
from clip4vla.models.loading import CheckpointError, check_state_dict, to_float32_state_dict
from clip4vla.models.pooling import encode_valid, masked_mean_normalised

__all__ = ["AUDIO_RESOLUTION", "AUDIO_TYPE_IDS", "AudioEncoder", "AudioType", "audio_vision_config",
           "resample_patch_positions", "resolve_audio_type"]

# The audio encoder's input side: the front-end's segment size (clip4vla.audio.segments.SEGMENT_LENGTH).
AUDIO_RESOLUTION = 224

# Type ids as the data pipeline produces them (sample["audio_type"]): 0 = [VB], 1 = [NB].
AUDIO_TYPE_IDS = {"vb": 0, "nb": 1}

# "vb" | "nb" | "both" | mixing ratio w in [0, 1] | LongTensor of type ids
AudioType = Union[str, float, int, torch.Tensor]


def resolve_audio_type(setting: Any, clip_types: torch.Tensor) -> AudioType:
    """A task's ``audio_type`` setting for one batch: ``"clip"`` takes each clip's own type id
    (``clip_types``, ``[B]``); ``"vb"``, ``"nb"``, ``"both"`` or a mixing ratio apply to every clip."""
    return clip_types if setting == "clip" else setting


def audio_vision_config(vision: VisionConfig) -> VisionConfig:
    """The image tower's architecture at the audio encoder's 224-px input (see the module docstring)."""
    if AUDIO_RESOLUTION % vision.patch_size:
        raise ValueError(f"the audio encoder's {AUDIO_RESOLUTION}-px segments are not a whole number of "
                         f"{vision.patch_size}-px patches")
    return dataclasses.replace(vision, image_resolution=AUDIO_RESOLUTION)


def resample_patch_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1 + g*g, W]`` positional rows (CLS first) -> ``[1 + grid*grid, W]``: the patch rows as a
    ``g x g`` map resized bicubically (in float32) to ``grid x grid``; the CLS row is kept."""
    cls_row, patches = table[:1], table[1:]
    side = round(patches.shape[0] ** 0.5)
    if side * side != patches.shape[0]:
        raise ValueError(f"{patches.shape[0]} patch positions are not a square grid")
    if side == grid:
        return table.clone()
    image = patches.float().T.reshape(1, -1, side, side)  # [1, W, g, g]
    resized = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_row, resized.reshape(-1, grid * grid).T.to(table.dtype)])


class AudioEncoder(nn.Module):
    """Audio tower: its own :class:`VisionTransformer` plus a ``[2, width]`` type table.

    With ``use_type_token`` the positional table has one extra row (``[1 + P + 1, W]``) for the
    type position. ``use_type_token=False`` builds the Table 5 ablation (rows 1-4): no type
    table, ``[1 + P, W]`` positions, and ``audio_type`` arguments are accepted but ignored so
    callers need not special-case the ablation.
    """

    def __init__(self, vision: VisionConfig, use_type_token: bool = True) -> None:
        super().__init__()
        self.use_type_token = use_type_token
        self.output_dim = vision.output_dim
        self.visual = VisionTransformer(vision, extra_positions=1 if use_type_token else 0)
        if use_type_token:
            self.type_embedding = nn.Parameter(vision.width**-0.5 * torch.randn(2, vision.width))
        else:
            self.register_parameter("type_embedding", None)

    # ------------------------------------------------------------------ construction

    @classmethod
    def scratch(cls, config: CLIPConfig, use_type_token: bool = True) -> AudioEncoder:
        """Randomly initialised encoder with the vision architecture of ``config`` (Table 5 row 1)."""
        return cls(audio_vision_config(config.vision), use_type_token=use_type_token)

    @classmethod
    def from_vision(cls, vision: VisionTransformer, use_type_token: bool = True) -> AudioEncoder:
        """Copy every tensor of a CLIP vision tower ("+Initial", Table 5 row 2; the default).

        The copies have their own storage, so training the audio encoder never touches the
        vision tower. Only what images lack stays random: the type table and the type
        position's positional row. A tower whose images are not 224 px has its patch positions
        resampled once to the 224-px segments' grid (:func:`resample_patch_positions`).
        """
        encoder = cls(audio_vision_config(vision.config), use_type_token=use_type_token).to(device=vision.proj.device)
        with torch.no_grad():
            state = {k: v.detach().clone() for k, v in vision.state_dict().items()}
            image_rows = state["positional_embedding"][: 1 + vision.num_patches]
            grid = AUDIO_RESOLUTION // vision.config.patch_size
            state["positional_embedding"] = torch.cat(
                [resample_patch_positions(image_rows, grid), encoder.visual.positional_embedding[1 + grid * grid:]]
            )
            encoder.visual.load_state_dict(state, strict=True)
        return encoder

    @classmethod
    def from_reference_state_dict(
        cls, state: Mapping[str, torch.Tensor], source: str = "reference state dict"
    ) -> AudioEncoder:
        """Load the released code's audio tower (REF keys).

        Accepts the keys of a full REF checkpoint (``audio.visual.*``; ``clip.*``, ``cross.*``
        and other heads are ignored here) or of its bare audio module (``visual.*``).
        ``visual.control_embedding`` ``[2, W]`` becomes ``type_embedding`` (same row order,
        0 = VB); its presence decides ``use_type_token`` and thus whether the positional table
        must have 1 + P + 1 rows or 1 + P.
        """
        prefix = "audio.visual." if any(k.startswith("audio.visual.") for k in state) else "visual."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointError(f"{source}: no keys under 'audio.visual.' or 'visual.'")
        use_type_token = "control_embedding" in sub
        vision = infer_vision_config(state, prefix, extra_positions=int(use_type_token), source=source)
        renamed = {
            ("type_embedding" if k == "control_embedding" else f"visual.{k}"): v for k, v in sub.items()
        }
        renamed = to_float32_state_dict(renamed, source, owned=False, drop=())
        with torch.device("meta"):
            encoder = cls(vision, use_type_token=use_type_token)
        # name the REF key in errors, so users can find it in their file
        check_state_dict(renamed, encoder.state_dict(), f"{source} (prefix {prefix!r}, control_embedding -> type_embedding)")
        encoder.load_state_dict(renamed, strict=True, assign=True)
        return encoder

    # ------------------------------------------------------------------ encoding

    def type_tokens(self, audio_type: AudioType, n: int) -> torch.Tensor:
        """Resolve ``audio_type`` to type token embeddings ``[N, T, W]`` (T = 2 for "both")."""
        table = self.type_embedding  # [2, W]
        if isinstance(audio_type, str):
            key = audio_type.lower()
            if key == "both":
                return table.unsqueeze(0).expand(n, 2, -1)
            if key not in AUDIO_TYPE_IDS:
                raise ValueError(f"audio_type must be 'vb', 'nb', 'both', a float or type ids; got {audio_type!r}")
            return table[AUDIO_TYPE_IDS[key]].expand(n, 1, -1)
        if isinstance(audio_type, torch.Tensor) and not audio_type.is_floating_point():
            if audio_type.dtype == torch.bool:
                raise TypeError("audio_type ids must be an integer tensor (0 = VB, 1 = NB), not bool")
            ids = audio_type.to(device=table.device, dtype=torch.long)
            ids = ids.expand(n) if ids.dim() == 0 else ids
            if ids.shape != (n,):
                raise ValueError(f"audio_type ids must have shape [{n}], got {tuple(audio_type.shape)}")
            if bool(((ids < 0) | (ids > 1)).any()):
                raise ValueError(f"audio_type ids must be 0 (VB) or 1 (NB), got {ids.unique().tolist()}")
            return table[ids].unsqueeze(1)  # [N, 1, W]
        if isinstance(audio_type, bool) or not isinstance(audio_type, (int, float, torch.Tensor)):
            raise TypeError(f"unsupported audio_type {audio_type!r}")
        if isinstance(audio_type, torch.Tensor) and audio_type.dim() != 0:
            raise ValueError("a float audio_type tensor must be a scalar mixing ratio")
        weight = float(audio_type)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"mixing ratio w must lie in [0, 1], got {weight}")
        # Figure 4's mixing: w = 0 is exactly [VB], w = 1 exactly [NB]
        mixed = (1.0 - weight) * table[0] + weight * table[1]
        return mixed.expand(n, 1, -1)

    def encode_segments(self, segments: torch.Tensor, audio_type: AudioType) -> torch.Tensor:
        """``[N, 3, 224, 224]`` segments -> ``[N, D]`` unnormalised segment features (projected CLS)."""
        x = self.visual.embed_patches(segments)  # [N, 1 + P, W]
        types = self.type_tokens(audio_type, x.shape[0]) if self.use_type_token else None
        return self.encode_embedded(x, types)

    def encode_embedded(self, x: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        """Embedded patches ``[N, 1 + P, W]`` plus type token embeddings ``[N, T, W]`` (None without
        the type token) -> ``[N, D]``.

        Split from :meth:`encode_segments` so the ONNX export can look its type ids up in
        ``type_embedding`` itself: :meth:`type_tokens` checks the ids' range with a branch on their
        values, which an exporter cannot trace.
        """
        if types is not None:
            types = types.to(x.dtype)
            # "both" (REF fine-tuning mode) puts VB and NB at the same, single type position
            type_position = self.visual.positional_embedding[-1].to(x.dtype)
            x = torch.cat([x, types + type_position], dim=1)  # [N, 1 + P + T, W]
        return self.visual.encode_tokens(x)

    def forward(
        self, segments: torch.Tensor, mask: torch.Tensor, audio_type: AudioType
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch: ``[B, L, 3, 224, 224]`` + ``[B, L]`` mask.

        Returns ``(segment_features [B, L, D], global [B, D])``. The valid segments of every clip
        go through the encoder in one call; padded ones are never encoded and read as zeros.
        ``audio_type`` may also be type ids per clip ``[B]`` or per segment ``[B, L]``.
        """
        if segments.dim() != 5 or mask.shape != segments.shape[:2]:
            raise ValueError(
                f"expected segments [B, L, 3, H, W] and mask [B, L], "
                f"got {tuple(segments.shape)} and {tuple(mask.shape)}"
            )
        batch, length = mask.shape
        if isinstance(audio_type, torch.Tensor) and not audio_type.is_floating_point() and audio_type.dim() >= 1:
            ids = audio_type.to(mask.device)
            if ids.shape == (batch,):
                ids = ids[:, None].expand(batch, length)
            elif ids.shape != (batch, length):
                raise ValueError(
                    f"audio_type ids must be per clip [{batch}] or per segment [{batch}, {length}], "
                    f"got {tuple(audio_type.shape)}"
                )
            features = encode_valid(self.encode_segments, segments, mask, self.output_dim, ids)
        else:
            features = encode_valid(
                lambda valid: self.encode_segments(valid, audio_type), segments, mask, self.output_dim
            )
        return features, masked_mean_normalised(features, mask)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
