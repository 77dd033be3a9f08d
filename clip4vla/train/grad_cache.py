"""Gradient accumulation that keeps the whole accumulated batch as negatives.

Plain accumulation computes the contrastive loss per micro-batch, so "batch 4096 in 16 steps"
really trains with 256 negatives (REF). Feature caching (GradCache) fixes that at the cost of one
extra forward pass of the trainable towers:

1. encode every micro-batch without a graph and keep the (small) feature tensors;
2. compute the loss once over the concatenated features, using detached leaf copies that require
   grad, and backward to get d loss / d feature;
3. re-encode each micro-batch with a graph and backpropagate its slice of those feature grads.

The parameter gradient is exactly the one of a single forward/backward on the whole accumulated
batch, because the loss only depends on the parameters through the features. For that the second
forward must repeat the first one bit for bit, so the RNG state (dropout, stochastic depth, ...)
is saved before each micro-batch's first pass and restored before its second.

Under DDP the loss gathers features over ranks (:mod:`clip4vla.losses`), so the negatives are the
global accumulated batch; pass ``no_sync=ddp_model.no_sync`` so only the last micro-batch's
backward triggers the gradient all-reduce.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["RngSnapshot", "cached_accumulation_step"]

Features = dict[str, Tensor]
EncodeFn = Callable[[Any], Mapping[str, Tensor]]
LossFn = Callable[[Features], tuple[Tensor, Mapping[str, Any]]]


@dataclass
class RngSnapshot:
    """Torch CPU and (if CUDA is initialised) per-device CUDA generator states."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> "RngSnapshot":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(cpu=torch.get_rng_state(), cuda=cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _as_features(out: Mapping[str, Tensor], where: str) -> Features:
    if not isinstance(out, Mapping):
        raise TypeError(f"{where} must return a dict of feature tensors, got {type(out).__name__}")
    for key, value in out.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{where} returned {key!r} of type {type(value).__name__}, expected a Tensor")
        if value.dim() == 0:
            raise ValueError(f"{where} returned a scalar for {key!r}; features need a batch dimension")
    return dict(out)


def cached_accumulation_step(
    encode_fn: EncodeFn,
    micro_batches: Sequence[Any],
    loss_fn: LossFn,
    no_sync: Callable[[], AbstractContextManager] | None = None,
    *,
    frozen_encode_fn: EncodeFn | None = None,
    scale_loss: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """One optimisation step's worth of gradients over ``len(micro_batches)`` micro-batches.

    Args:
        encode_fn: ``batch -> {name: features [b, ...]}`` through the trainable towers; called
            twice per micro-batch (without, then with autograd) and must be deterministic given
            the torch RNG state.
        micro_batches: the micro-batches of this step (any objects ``encode_fn`` understands).
        loss_fn: ``{name: features [sum b, ...]} -> (loss, parts)`` on the concatenation of all
            micro-batches (e.g. :class:`clip4vla.losses.PretrainLoss`, which also gathers over ranks).
        no_sync: context-manager factory entered around all but the last micro-batch's second
            pass (``ddp_model.no_sync``), so DDP all-reduces gradients once per step.
        frozen_encode_fn: optional ``batch -> {name: features}`` for frozen towers (text/vision in
            the paper's default); run once without autograd and never recomputed.
        scale_loss: optional transform applied to the loss before the backward (e.g.
            ``GradScaler.scale`` for fp16); the parameter gradients then carry that scale.

    Returns ``(loss, parts)``, detached. Gradients are *accumulated* into ``.grad`` (call
    ``optimizer.zero_grad()`` before, as usual). Parameters used by ``loss_fn`` itself (a
    learnable logit scale) get their gradient from step 2 directly; under DDP average those
    with :func:`clip4vla.train.distributed.all_reduce_grads_mean`.
    """
    if len(micro_batches) == 0:
        raise ValueError("cached_accumulation_step needs at least one micro-batch")

    # pass 1: features without a graph; remember the RNG state each micro-batch started from
    snapshots: list[RngSnapshot] = []
    cached: list[Features] = []
    with torch.no_grad():
        for i, batch in enumerate(micro_batches):
            snapshots.append(RngSnapshot.capture())
            feats = _as_features(encode_fn(batch), "encode_fn")
            if frozen_encode_fn is not None:
                frozen = _as_features(frozen_encode_fn(batch), "frozen_encode_fn")
                clash = feats.keys() & frozen.keys()
                if clash:
                    raise ValueError(f"encode_fn and frozen_encode_fn both return {sorted(clash)}")
                feats.update(frozen)
            if cached and feats.keys() != cached[0].keys():
                raise ValueError(
                    f"micro-batch {i} features {sorted(feats)} differ from micro-batch 0's {sorted(cached[0])}"
                )
            cached.append(feats)

    # the loss over the whole accumulated batch, on leaves that collect d loss / d feature
    sizes = [next(iter(f.values())).shape[0] for f in cached]
    leaves: Features = {}
    for key in cached[0]:
        joined = torch.cat([f[key] for f in cached], dim=0)
        if joined.is_floating_point():
            joined.requires_grad_(True)
        leaves[key] = joined
    loss, parts = loss_fn(leaves)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError("loss_fn must return (scalar loss tensor, parts)")
    (scale_loss(loss) if scale_loss is not None else loss).backward()
    feature_grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    if not feature_grads:
        raise RuntimeError("the loss does not depend on any feature returned by encode_fn")
    after_loss = RngSnapshot.capture()

    # pass 2: re-encode with a graph, replaying the RNG, and push the cached gradients through
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    last = len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        snapshots[i].restore()
        ctx = no_sync() if (no_sync is not None and i < last) else contextlib.nullcontext()
        with ctx:
            feats = _as_features(encode_fn(batch), "encode_fn")
            outputs, grads = [], []
            for key, value in feats.items():
                if key not in cached[i] or value.shape != cached[i][key].shape:
                    raise RuntimeError(
                        f"encode_fn is not repeatable: {key!r} gave shape {tuple(value.shape)} on the "
                        f"second pass of micro-batch {i}, expected "
                        f"{tuple(cached[i][key].shape) if key in cached[i] else 'no such feature'}"
                    )
                if value.requires_grad and key in feature_grads:
                    outputs.append(value)
                    grads.append(feature_grads[key][starts[i] : starts[i] + sizes[i]].to(value.dtype))
            if not outputs:
                raise RuntimeError(
                    f"no feature of micro-batch {i} requires grad: nothing in encode_fn is trainable"
                )
            torch.autograd.backward(outputs, grads)
    # leave the generator where the un-replayed computation left it, not at the last replay point
    after_loss.restore()

    parts_out = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in parts.items()}
    return loss.detach(), parts_out
