"""torch.distributed plumbing: process-group setup from torchrun's environment, small collectives,
and DDP wrapping.

Single-process runs (``WORLD_SIZE`` unset or 1) create no process group at all, so every helper
here degrades to a no-op and the same training code runs with or without torchrun.
"""

from __future__ import annotations

import datetime
import gc
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo",
    "DistributedSetupError",
    "DistributedTimeoutError",
    "is_timeout",
    "name_missing_ranks",
    "init_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_reduce_mean",
    "all_reduce_grads_mean",
    "broadcast_object",
    "cleanup",
    "wrap_ddp",
    "unwrap_model",
    "no_sync_factory",
]


class DistributedSetupError(RuntimeError):
    """torchrun's environment is incomplete or inconsistent."""


class DistributedTimeoutError(RuntimeError):
    """A rank stopped answering (a hung file-system read, SIGSTOP, a crash) for longer than the timeout."""


# A gloo group beside the main one for monitored barriers, which name the ranks that did not arrive
# (gloo is the only backend that implements them; NCCL runs need it, and a gloo main group is no
# use after one of its collectives timed out).
_monitor_group: Any = None
_timeout_s: float = 1800.0


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise DistributedSetupError(f"environment variable {name}={value!r} is not an integer") from err


def init_distributed(
    backend: str | None = None, timeout_s: float = 1800.0, device: str | torch.device | None = None
) -> DistInfo:
    """Set up the default process group from torchrun's env vars (RANK, LOCAL_RANK, WORLD_SIZE).

    Backend: NCCL when CUDA is available, gloo otherwise (override with ``backend``). With
    ``WORLD_SIZE`` unset or 1 no process group is created. ``device`` forces a device type
    (e.g. "cpu" to run gloo on a CUDA machine); by default ``cuda:LOCAL_RANK`` if CUDA exists.
    Calling it again when a group already exists just reports the current state.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    if world_size < 1 or not (0 <= rank < world_size):
        raise DistributedSetupError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")

    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedSetupError("a CUDA device was asked for (train.device=cuda), but torch sees no CUDA GPU "
                                        "on this machine: use train.device=auto or cpu")
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")

    if world_size > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise DistributedSetupError(f"WORLD_SIZE={world_size} but {var} is not set (launch with torchrun)")
        global _monitor_group, _timeout_s
        backend = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        _timeout_s = float(timeout_s)
        # its own group even under gloo: a timed-out collective closes the main group's connections
        _monitor_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, is_main=rank == 0)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier(timeout_s: float | None = None) -> None:
    """Wait for every rank; after ``timeout_s`` (default: the process group's) raise
    :class:`DistributedTimeoutError` naming the ranks that did not arrive."""
    if not is_distributed():
        return
    timeout = _timeout_s if timeout_s is None else timeout_s
    try:
        dist.monitored_barrier(group=_monitor_group, timeout=datetime.timedelta(seconds=timeout), wait_all_ranks=True)
    except RuntimeError as err:
        raise DistributedTimeoutError(
            f"rank {dist.get_rank()}: not every rank reached the barrier within {timeout:.0f} s "
            f"(train.dist_timeout_s): {err}"
        ) from err


def name_missing_ranks(err: BaseException, probe_s: float = 30.0) -> DistributedTimeoutError:
    """After a collective timed out: find out with a short monitored barrier which ranks are gone.

    Rank 0 learns the silent ranks' numbers; the others learn that rank 0 did not confirm.
    """
    rank = dist.get_rank()
    try:
        dist.monitored_barrier(group=_monitor_group, timeout=datetime.timedelta(seconds=probe_s), wait_all_ranks=True)
        detail = "every rank answered a barrier afterwards"
    except RuntimeError as probe:
        detail = str(probe).strip().splitlines()[0]
    return DistributedTimeoutError(
        f"rank {rank}: a collective operation timed out after {_timeout_s:.0f} s (train.dist_timeout_s); "
        f"{detail}. A rank stopped answering (hung data read, SIGSTOP, crash). Original error: {err}"
    )


def is_timeout(err: BaseException) -> bool:
    """Whether a backend error is a collective timing out (gloo and NCCL word it differently)."""
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over ranks, as a new tensor (a detached copy when not distributed)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_reduce_grads_mean(params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` of parameters that DDP does not manage (e.g. a learnable logit scale that
    lives in the loss, outside the DDP-wrapped model). Parameters without a grad are skipped;
    every rank must pass the same list."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; meant for small things like configs)."""
    if not is_distributed():
        return obj
    holder = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup() -> None:
    """Destroy the process group. Drop every DDP-wrapped model first: a DDP reducer that
    outlives its process group can abort the interpreter at exit ("terminate called without an
    active exception", seen with gloo in about a third of runs)."""
    global _monitor_group
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # collect unreachable DDP wrappers (reference cycles) while the group exists
        dist.destroy_process_group()
    _monitor_group = None


def wrap_ddp(model: nn.Module, info: DistInfo, ignore: list[str] | None = None, **ddp_kwargs: Any) -> nn.Module:
    """Wrap ``model`` in DDP when ``info.world_size > 1`` (otherwise return it unchanged).

    ``find_unused_parameters=True`` by default: not every trainable parameter takes part in every
    step (``clip.logit_scale`` is never used, the loss owns the temperature; a rank whose local
    batch has no valid frame or audio segment never runs that tower). With DDP's ``False`` the
    bucket holding such a parameter is never all-reduced, each rank silently steps on its own
    gradients, and the next step fails with "Expected to have finished reduction". Frozen towers
    have ``requires_grad=False`` and are ignored either way. A model with nothing to train is
    returned unwrapped (DDP refuses it).
    """
    if not info.distributed or not any(p.requires_grad for p in model.parameters()):
        return model
    if ignore:  # trained and synchronised outside DDP (``ignore``: parameter names in ``model``)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
    ddp_kwargs.setdefault("find_unused_parameters", True)
    if info.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [info.device.index])
        ddp_kwargs.setdefault("output_device", info.device.index)
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for state dicts and parameter names without ``module.``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync_factory(model: nn.Module) -> Callable[[], AbstractContextManager] | None:
    """``model.no_sync`` for a DDP model (skip the gradient all-reduce on accumulation micro-steps),
    ``None`` otherwise — the form :func:`clip4vla.train.grad_cache.cached_accumulation_step` takes."""
    return model.no_sync if isinstance(model, DistributedDataParallel) else None
