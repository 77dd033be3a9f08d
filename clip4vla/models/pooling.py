"""Pooling of per-item features (frames, audio segments) into one clip embedding.

One function for both modalities, so video and audio globals are computed identically
(L2-normalise each item -> masked mean -> L2-normalise), and one helper that
encodes only the valid items of a padded batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["encode_empty_batches", "encode_valid", "masked_mean_normalised"]

# Whether a batch with no valid item still runs its encoder (on one padded item, weighted zero)
# while autograd records: FSDP (clip4vla.train.fsdp) needs every rank to run every sharded tower
# each step, since a block's backward is a collective; a rank whose local batch has no frame
# (all sound files) would otherwise leave the others waiting forever.
_ENCODE_EMPTY = False


def encode_empty_batches(enable: bool) -> None:
    """Set the process-wide rule above (on under ``train.strategy: fsdp``)."""
    global _ENCODE_EMPTY
    _ENCODE_EMPTY = enable


def masked_mean_normalised(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, L, D]`` features and ``[B, L]`` bool mask -> ``[B, D]`` unit-norm global feature.

    Rows whose mask is all False (a clip without audio) give a zero vector, not NaN, so they
    drop out of similarity matrices instead of poisoning them. Half-precision input is pooled
    and returned in float32 (e.g. under bf16 autocast): the global feature feeds the contrastive logits.
    """
    if features.dim() != 3 or mask.shape != features.shape[:2]:
        raise ValueError(
            f"expected features [B, L, D] and mask [B, L], got {tuple(features.shape)} and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be torch.bool (True = valid), got {mask.dtype}")
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    weights = mask.to(features.dtype).unsqueeze(-1)  # [B, L, 1]
    items = F.normalize(features, dim=-1) * weights
    mean = items.sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [B, D]
    return F.normalize(mean, dim=-1)


def encode_valid(
    encode: Callable[..., torch.Tensor],
    items: torch.Tensor,
    mask: torch.Tensor,
    output_dim: int,
    *per_item: torch.Tensor,
) -> torch.Tensor:
    """Run ``encode`` once on the valid rows of a padded batch and scatter back.

    ``items`` is ``[B, L, ...]`` and ``mask`` ``[B, L]``; the result is ``[B, L, output_dim]``
    with zeros at padded positions, which are never encoded (padding costs no compute and can
    not leak into the features). ``per_item`` tensors shaped ``[B, L, ...]`` are gathered the
    same way and passed to ``encode`` after the items (e.g. per-segment audio type ids).
    """
    if mask.dtype != torch.bool or mask.shape != items.shape[:2]:
        raise ValueError(
            f"expected a bool mask of shape {tuple(items.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
        )
    batch, length = mask.shape
    if not bool(mask.any()):
        zeros = items.new_zeros(batch, length, output_dim, dtype=torch.float32)
        if _ENCODE_EMPTY and torch.is_grad_enabled() and batch * length:
            # the encoder takes part (zero gradients) without changing a value
            touched = encode(items[:1, 0], *(t[:1, 0] for t in per_item))
            return zeros + torch.nan_to_num(touched).float().sum() * 0.0
        return zeros
    if bool(mask.all()):
        # Nothing padded (the common case): a view instead of a copy of the whole input batch,
        # which for [B, L, 3, 224, 224] pixels costs as much time as a small model's forward.
        flat = encode(items.flatten(0, 1), *(t.flatten(0, 1) for t in per_item))
        return flat.view(batch, length, flat.shape[-1])
    valid = encode(items[mask], *(t[mask] for t in per_item))  # [N_valid, D]
    out = valid.new_zeros(batch, length, valid.shape[-1])
    return out.index_put((mask,), valid)
