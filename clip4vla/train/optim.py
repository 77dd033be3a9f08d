"""AdamW with CLIP4Clip-style parameter groups, and the warm-up + cosine schedule.

Parameter groups (only parameters with ``requires_grad``):

* ``backbone_decay``   — weight matrices (ndim ≥ 2, not embeddings) of the CLIP / audio towers:
  ``lr·coef_lr``, weight decay 0.2;
* ``backbone_no_decay`` — their biases, LayerNorm weights, class/positional/token/type
  embeddings: ``lr·coef_lr``, no decay;
* ``new``               — everything else (fusion transformers, caption head, probes, a learnable
  logit scale): ``lr``, no decay.

Which lr applies in pre-training: there every trainable parameter is a backbone (the audio
encoder, and the CLIP towers with the train-all option), so they all train at ``lr·coef_lr``;
pre-training configs therefore use ``coef_lr = 1`` so that the configured ``lr`` (1e-7 in the
released settings) is the audio encoder's learning rate.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .distributed import unwrap_model

__all__ = ["param_groups", "build_optimizer", "WarmupCosine", "warmup_cosine_factor"]

_NO_DECAY_MODULES = (nn.LayerNorm, nn.Embedding, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters owned by normalisation / embedding modules (by type, not by name)."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NO_DECAY_MODULES):
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(
    model: nn.Module, backbone_prefixes: Sequence[str] = ("clip.", "audio.")
) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable ``(name, parameter)`` pairs split into ``backbone_decay``, ``backbone_no_decay``, ``new``."""
    model = unwrap_model(model)
    no_decay_by_type = _no_decay_names(model)
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"backbone_decay": [], "backbone_no_decay": [], "new": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not name.startswith(tuple(backbone_prefixes)):
            groups["new"].append((name, p))
        elif p.ndim >= 2 and "embedding" not in name and name not in no_decay_by_type:
            groups["backbone_decay"].append((name, p))
        else:
            groups["backbone_no_decay"].append((name, p))
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    coef_lr: float = 1.0,
    weight_decay: float = 0.2,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    backbone_prefixes: Sequence[str] = ("clip.", "audio."),
    sharded: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with the groups described in the module
    docstring. Each group carries a ``"name"`` key for logging. Empty groups are left out.
    ``sharded``: some parameters are FSDP shards (``train.strategy: fsdp``)."""
    if lr <= 0 or coef_lr <= 0:
        raise ValueError(f"lr and coef_lr must be > 0, got lr={lr}, coef_lr={coef_lr}")
    groups = param_groups(model, backbone_prefixes)
    settings = {
        "backbone_decay": (lr * coef_lr, weight_decay),
        "backbone_no_decay": (lr * coef_lr, 0.0),
        "new": (lr, 0.0),
    }
    optim_groups = [
        {"name": name, "params": [p for _, p in members], "lr": settings[name][0], "weight_decay": settings[name][1]}
        for name, members in groups.items()
        if members
    ]
    if not optim_groups:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to optimise")
    kwargs = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if sharded:  # FSDP's sharded parameters beside plain ones: the fused and multi-tensor kernels refuse the mix
        return torch.optim.AdamW(optim_groups, foreach=False, **kwargs)
    try:
        # One fused kernel per step instead of a Python loop over tensors: measured 8.6 vs 61 ms a
        # step on 2 CPU cores for the 8.4 M parameters of the tiny quick-start model.
        return torch.optim.AdamW(optim_groups, fused=True, **kwargs)
    except RuntimeError:  # no fused AdamW for these devices/dtypes (e.g. CPU before torch 2.4)
        return torch.optim.AdamW(optim_groups, **kwargs)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier: linear 0 → 1 over ``warmup_steps``, then cosine 1 → 0 at ``total_steps``.

    (REF's BertAdam schedule takes the cosine over the *whole* run's progress, so it jumps down
    right after warm-up; we start the cosine where warm-up ends.)
    """
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(LRScheduler):
    """Per-step scheduler: ``lr = base_lr · warmup_cosine_factor(step)``; call ``step()`` after
    every optimiser step. ``warmup`` is the warm-up fraction of ``total_steps`` (0.1 in every released setting).
    Its state dict holds only numbers, so it loads with ``torch.load(weights_only=True)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1, last_epoch: int = -1):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup is a fraction in [0, 1), got {warmup}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(round(warmup * total_steps))
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_cosine_factor(self.last_epoch, self.total_steps, self.warmup_steps)
        return [base_lr * factor for base_lr in self.base_lrs]
