"""``train.strategy: fsdp``: the towers' transformer blocks sharded across ranks with FSDP2.

What a ViT-L CLIP4VLA with every tower trainable cannot afford under DDP is the per-rank copy of
its ~730 M parameters' weights, gradients and AdamW moments (~12 GB in fp32). More than 90 % of
those parameters sit in the towers' transformer blocks, so each trainable block becomes its own
``torch.distributed.fsdp.fully_shard`` unit: a rank keeps 1/world of the block's weights, gradients
and optimiser moments, all-gathers a block's weights just before it runs and reduce-scatters its
gradients right after its backward. Everything else stays replicated, as under DDP, with its
gradients averaged by the loop after the backward (as it already does for the loss's temperature):

* the towers' embeddings, final norms and projections (a few percent of the parameters, and
  called through methods such as ``encode_text`` that FSDP's forward hooks would not see);
* the task heads (fusion, caption generator: small next to the towers);
* frozen towers (``model.train_clip: false``): they need no gradients or moments, and sharding them
  would add an all-gather per block per step to save only their weights.

The gathered NCE losses and the feature-cached accumulation keep their meaning: the losses see the
same features as under DDP, and accumulation micro-steps skip the reduce-scatter
(``set_requires_gradient_sync(False)``) until the last, like DDP's ``no_sync``.

Checkpoints are written by every rank, each its shard (``torch.distributed.checkpoint``, see
:mod:`clip4vla.train.sharded_checkpoint`), and resume on another world size or strategy; a DDP
run's single file resumes under FSDP too (:func:`load_full_model_state`). Evaluation runs on the
main rank alone, which cannot run sharded blocks; it gets an unsharded copy built from the gathered
weights (:func:`unsharded_copy`), as do ``best.pt`` and the exported model folder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from clip4vla.models.checkpoints import model_architecture, model_from_architecture
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.pooling import encode_empty_batches
from clip4vla.train.distributed import DistInfo

__all__ = ["Sharding", "ShardedGradScaler", "full_model_state", "unsharded_copy"]

log = logging.getLogger(__name__)


def _is_dtensor(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


class Sharding:
    """The FSDP2 units of a model (its trainable tower blocks) and what the loop needs around them.

    ``Sharding.apply(model, dist, precision)`` shards in place; with one process there is nothing
    to shard and it returns ``None`` (the run is an ordinary single-process run, and says so).
    """

    def __init__(self, blocks: list[nn.Module], params: list[nn.Parameter]) -> None:
        self.blocks = blocks
        sharded = {id(p) for p in params if _is_dtensor(p)}
        self.replicated = [p for p in params if id(p) not in sharded]

    @classmethod
    def apply(cls, model: CLIP4VLA, dist: DistInfo, precision: str,
              trainable: Iterable[nn.Parameter]) -> Sharding | None:
        if not dist.distributed:
            log.warning("train.strategy=fsdp on one process: nothing to shard, training as a single process")
            return None
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        blocks = [b for b in model.tower_blocks() if any(p.requires_grad for p in b.parameters())]
        if not blocks:
            raise ValueError("train.strategy=fsdp shards the trainable towers' blocks, and this model has none "
                             "(every tower frozen): use train.strategy=ddp")
        # bf16: blocks compute in bf16 and reduce gradients in fp32 (autocast still covers the rest);
        # fp16 keeps fp32 weights under autocast, as the GradScaler expects
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if precision == "bf16" else MixedPrecisionPolicy()
        mesh = init_device_mesh(dist.device.type, (dist.world_size,))
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        encode_empty_batches(True)  # a block's backward is a collective: every rank runs every tower
        sharding = cls(blocks, list(trainable))
        total = sum(p.numel() for p in trainable_params(blocks))
        log.info("train.strategy=fsdp: %d tower blocks sharded over %d ranks (%.1f M parameters, %.1f M per rank); "
                 "%.1f M parameters replicated", len(blocks), dist.world_size, total / 1e6, total / dist.world_size / 1e6,
                 sum(p.numel() for p in sharding.replicated) / 1e6)
        return sharding

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally: no reduce-scatter until the micro-step outside this context."""
        for block in self.blocks:
            block.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for block in self.blocks:
                block.set_requires_gradient_sync(True)

    def sync_replicated_grads(self) -> None:
        """Average the replicated parameters' gradients over the ranks (sharded ones are averaged
        by their reduce-scatter)."""
        from clip4vla.train.distributed import all_reduce_grads_mean

        all_reduce_grads_mean(self.replicated)


class ShardedGradScaler(torch.amp.GradScaler):
    """fp16 loss scaling over sharded and replicated gradients together.

    torch's ``GradScaler`` unscales a device's gradients in one multi-tensor call, which refuses a
    list mixing sharded (DTensor) and plain tensors; here each shard is unscaled as the plain local
    tensor it holds. A rank sees only its shards, so the "found inf" flags are combined over the
    ranks (max): every rank skips the same steps, or the replicas would drift apart.
    """

    def _unscale_grads_(self, optimizer: torch.optim.Optimizer, inv_scale: Tensor, found_inf: Tensor,
                        allow_fp16: bool) -> dict[torch.device, Tensor]:
        from torch.amp.grad_scaler import _MultiDeviceReplicator

        per_device_inv_scale = _MultiDeviceReplicator(inv_scale)
        per_device_found_inf = _MultiDeviceReplicator(found_inf)
        grads: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = _local(param.grad)
                if not allow_fp16 and grad.dtype == torch.float16:
                    raise ValueError("Attempting to unscale FP16 gradients.")
                grads.setdefault((grad.device, grad.dtype), []).append(grad)
        with torch.no_grad():
            for (device, _), tensors in grads.items():
                torch._amp_foreach_non_finite_check_and_unscale_(
                    tensors, per_device_found_inf.get(device), per_device_inv_scale.get(device))
            per_device_found_inf.get(found_inf.device)  # the flag exists even without a gradient
            for flag in per_device_found_inf._per_device_tensors.values():
                torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        return per_device_found_inf._per_device_tensors


def trainable_params(modules: Iterable[nn.Module]) -> Iterator[nn.Parameter]:
    return (p for m in modules for p in m.parameters() if p.requires_grad)


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over sharded and replicated parameters together (the
    torch function cannot mix the two kinds): each rank sums the squares of its shards, the sums are
    added over ranks, the replicated ones (equal on every rank) are counted once."""
    sharded = torch.zeros((), dtype=torch.float64, device=params[0].device if params else "cpu")
    replicated = torch.zeros_like(sharded)
    for p in params:
        if p.grad is None:
            continue
        if _is_dtensor(p.grad):
            sharded += _local(p.grad).double().square().sum()
        else:
            replicated += p.grad.double().square().sum()
    torch_dist.all_reduce(sharded)
    total = (sharded + replicated).sqrt()
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            _local(p.grad).mul_(coefficient.to(p.grad.dtype))
    return total.float()


def all_finite(params: Iterable[nn.Parameter]) -> bool:
    """Every rank's shards and replicas are finite (the same answer on every rank)."""
    params = list(params)
    flag = torch.tensor([1.0 if all(bool(torch.isfinite(_local(p.detach())).all()) for p in params) else 0.0],
                        device=params[0].device if params else "cpu")
    torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def full_model_state(module: nn.Module) -> dict[str, Tensor]:
    """``module.state_dict()`` with every sharded tensor gathered (a collective: every rank calls
    it, in the same order) and moved to the CPU."""
    return {name: (value.full_tensor() if _is_dtensor(value) else value).detach().cpu()
            for name, value in module.state_dict().items()}


def load_full_model_state(module: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load full tensors into a module whose blocks may be sharded: each rank copies its part."""
    from torch.distributed.tensor import distribute_tensor

    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"the checkpoint's model state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, target in own.items():
            value = state[name].to(device=target.device, dtype=target.dtype)
            if _is_dtensor(target):
                value = distribute_tensor(value.detach(), target.device_mesh, target.placements).to_local()
            _local(target).copy_(value)


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a full (DDP-layout) optimiser state: the moments of sharded parameters are split the
    way their parameters are before torch's loader sees them."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    converted = {}
    for index, entry in state["state"].items():
        param = params[int(index)]
        converted[index] = {
            k: distribute_tensor(v.detach().to(param.device), param.device_mesh, param.placements)
            if _is_dtensor(param) and isinstance(v, Tensor) and v.shape == param.shape else v
            for k, v in entry.items()
        }
    optimizer.load_state_dict({**state, "state": converted})


def unsharded_copy(model: CLIP4VLA, state: Mapping[str, Tensor]) -> CLIP4VLA:
    """A plain (unsharded) copy of ``model`` with the gathered weights ``state``, on its device:
    what the main rank evaluates, selects and exports."""
    copy = model_from_architecture(model_architecture(model), "the sharded model")
    copy.load_state_dict(dict(state), strict=True, assign=True)
    copy.preprocessing = model.preprocessing
    device = next(p.device for p in model.parameters())
    for source, target in zip(model.modules(), copy.modules()):
        target.train(source.training)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    for name, p in copy.named_parameters():
        p.requires_grad_(name not in frozen)
    return copy.to(device)
