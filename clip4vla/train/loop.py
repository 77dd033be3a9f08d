"""The one training loop: data -> task forward -> task loss -> AdamW, for every task.

Written out rather than hidden in a framework, so that what one optimiser step does is readable
top to bottom in :meth:`Trainer.train_step`. What differs between pre-training, retrieval and
captioning is a :class:`clip4vla.train.task.Task`; everything here is shared: DDP, autocast and
loss scaling, feature-cached accumulation, clipping, the schedule, the non-finite check,
checkpoints and bitwise resume (model, optimiser, scheduler, scaler, step, RNG, metrics history),
the validation cadence, best-checkpoint selection, the progress bar, ``metrics.jsonl``, the
plots and the exported model folder ``model/``.

Outputs under ``train.output_dir``: ``config.yaml``, ``metrics.jsonl``, ``loss_curves.png``,
``checkpoints/ckpt_<step>.pt`` (the newest ``keep_last``; FSDP runs write folders of per-rank shards
``checkpoints/ckpt_<step>/`` instead), ``checkpoints/best.pt`` (weights of
the best validation so far) and ``model/`` (the model folder with its card, ``clip4vla.from_pretrained``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from clip4vla.config import ConfigError, RunConfig, TrainConfig, check_trainable, config_to_dict
from clip4vla.data.dataset import SkipReport, TriModalDataset, collate_samples
from clip4vla.data.sampler import ResumableShardedSampler
from clip4vla.data.splits import DataSplits
from clip4vla.models.checkpoints import ModelFile, model_record
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.factory import build_model, inputs_for_model, read_init_file
from clip4vla.models.hub import locate_model
from clip4vla.models.loading import CheckpointError
from clip4vla.models.pooling import encode_empty_batches
from clip4vla.models.sharded_reader import read_sharded_model
from clip4vla.plotting import plot_metrics
from clip4vla.precision import autocast
from clip4vla.train.checkpoint import capture_rng_state, check_writable, restore_rng_state, state_bytes
from clip4vla.train.distributed import (
    DistInfo,
    all_reduce_grads_mean,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    is_distributed,
    is_timeout,
    name_missing_ranks,
    no_sync_factory,
    wrap_ddp,
)
from clip4vla.train.compile import check_compiler, compile_tower_blocks
from clip4vla.train.cpu_memory import keep_freed_memory
from clip4vla.train.fsdp import (
    Sharding,
    ShardedGradScaler,
    all_finite,
    full_model_state,
    load_full_model_state,
    load_full_optimizer_state,
    unsharded_copy,
)
from clip4vla.train.fsdp import clip_grad_norm as fsdp_clip_grad_norm
from clip4vla.train.grad_cache import cached_accumulation_step
from clip4vla.train.model_card import run_card
from clip4vla.train.optim import WarmupCosine, build_optimizer, warmup_cosine_factor
from clip4vla.train.resume import check_architecture
from clip4vla.train.sharded_checkpoint import load_sharded, sharded_state
from clip4vla.train.run_folder import RunFolder
from clip4vla.train.selection import BestWeights, selection
from clip4vla.train.task import Batch, Features, Task

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised (on every rank together) when the loss of a step is NaN or inf."""


class NonFiniteWeightsError(FloatingPointError):
    """Raised (on every rank together: the weights are the same) when a step made a weight NaN/inf."""


class Fp16OverflowError(NonFiniteLossError):
    """fp16 overflowed step after step with the loss scale already at its floor: the run's values
    do not fit in fp16 (one overflow is a skipped step, see :meth:`Stepper.note_fp16_step`)."""


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cpu_bf16_slowdown(size: int = 256) -> float:
    """How many times slower a bf16 matmul is than an fp32 one on this CPU (timed, ~0.1 s).

    CPUs without bf16 instructions (e.g. AVX2-only EPYC/Xeon) emulate it: measured 1.3 against
    130 GFLOP/s for fp32 on a 2-core AVX2 EPYC, so bf16 autocast there makes training ~100x
    slower instead of ~2-3x faster as on AVX-512-BF16/AMX CPUs.
    """
    timings = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.ones(size, size, dtype=dtype), torch.ones(size, size, dtype=dtype)
        a @ b  # warm-up (kernel selection)
        start = time.perf_counter()
        a @ b
        timings.append(time.perf_counter() - start)
    return timings[1] / max(timings[0], 1e-9)


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 where the hardware has no bf16: refused on a GPU, a warning on a CPU that emulates it."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision=bf16 is not supported by this GPU (V100: use fp16)")
    if precision == "bf16" and device.type == "cpu":
        slowdown = cpu_bf16_slowdown()
        if slowdown > 4.0:
            log.warning(
                "train.precision=bf16: a bf16 matmul is %.0fx slower than fp32 on this CPU (no bf16 "
                "instructions), so training will be far slower than with train.precision=fp32", slowdown
            )


def fill_caches(data: DataSplits, world_size: int, is_main: bool, training: bool = True) -> None:
    """Decode the cached splits once, in parallel, before the first step (see ``fill_cache``);
    without ``training`` (nothing left to train) only the test split."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = cpus // world_size
    workers = workers if workers > 1 else 0  # a single worker would only add the hand-over
    with torch_threads(1):  # in-process decoding is faster single-threaded (see epoch_batches)
        if training:
            data.train.fill_cache(workers, progress=is_main)
        if is_main:  # only the main rank evaluates
            for dataset in (data.val if training else None, data.test):
                if dataset is not None:
                    dataset.fill_cache(workers)


def start_file(config: RunConfig, task: Task, resume_from: tuple[dict[str, Any], Path, Any] | None) -> ModelFile | None:
    """The weights a run's model starts from, read and checked before any data work: on resume
    the checkpoint's (every weight is there, so ``init_from`` is not read), else ``init_from``."""
    mc = config.model
    if resume_from is not None:
        state, path, _ = resume_from
        # a sharded checkpoint's full weights, read here to build the model; its shards and moments
        # are read again by every rank once the model is sharded (Stepper.load_state_dict)
        weights = read_sharded_model(path) if state.get("sharded") else state["model"]
        return ModelFile(kind="trainer checkpoint", architecture=state["architecture"], state_dict=weights,
                         preprocessing=None, source=str(path))
    if task.requires_init and not mc.init_from:
        raise ConfigError(
            f"model.init_from is required: {task.name} fine-tuning starts from a pre-trained model "
            "(a model folder, e.g. runs/pretrain_synthetic/model after `python scripts/pretrain.py`, or a Hub id)"
        )
    if not mc.init_from:
        return None
    try:
        source = locate_model(mc.init_from)
    except CheckpointError as err:
        raise ConfigError(f"model.init_from={mc.init_from}: {err}") from err
    return read_init_file(dataclasses.replace(mc, init_from=str(source)))  # a Hub id: resolved once


def drop_untrained_heads(model: CLIP4VLA, task: Task, is_main: bool) -> None:
    """Heads of ``init_from`` that the task does not train would be stale after it (their towers
    move under them): they are dropped, so the run's model files never offer them."""
    for name in [n for n in model.heads if n not in task.trained_heads]:
        del model.heads[name]
        if is_main:
            log.warning("model.init_from's %s head is not trained by this %s run: left out of its model files",
                        name, task.name)


def epoch_batches(dataset: TriModalDataset, sampler: ResumableShardedSampler, batch_size: int, num_workers: int,
                  device: torch.device, epoch: int, start_batch: int) -> Iterator[Batch]:
    """This rank's batches of ``epoch`` from batch ``start_batch`` on (a resumed epoch skips the rest)."""
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch, start_batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                         collate_fn=collate_samples, drop_last=True, pin_memory=device.type == "cuda")
    if num_workers > 0:
        yield from loader
        return
    # In-process loading: decoding and the front-end are many small ops for which intra-op
    # threads cost more than they save (measured 6x slower with 2 threads on 2 cores), as
    # DataLoader workers already know (they run with one thread). Compute gets them back.
    batches = iter(loader)
    while True:
        with torch_threads(1):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def run_length(tc: TrainConfig, batches_per_epoch: int, n_samples: int) -> tuple[int, int]:
    """``(steps per epoch, total steps)`` of a run: ``train.epochs`` of full steps, capped by ``max_steps``."""
    steps_per_epoch = batches_per_epoch // tc.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch of {n_samples} samples does not fill one step of "
                         f"{tc.batch_size} x {tc.accum_steps} accumulation steps")
    total = tc.epochs * steps_per_epoch
    return steps_per_epoch, min(total, tc.max_steps) if tc.max_steps else total


class SigtermStop:
    """A scheduler's SIGTERM (SLURM, Kubernetes pre-emption), honoured at the next step boundary
    on every rank; a second SIGTERM is not delayed."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def note(signum: int, frame: Any) -> None:
            self.signum = signum
            signal.signal(signal.SIGTERM, previous)
            log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")

        previous = signal.signal(signal.SIGTERM, note)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank received SIGTERM (all ranks stop at the same step)."""
        flag = torch.tensor(0.0 if self.signum is None else 1.0, device=device)
        return bool(all_reduce_mean(flag).item() > 0) if is_distributed() else self.signum is not None


class Stepper:
    """One optimiser step of a task: forward, loss, backward, clipping, AdamW, schedule.

    The part of the loop that touches no data loader and no file, so the step benchmark
    (``benchmarks/pretrain_step.py``) times exactly what training runs.
    """

    # fp16 (train.precision=fp16): a step whose gradients, or whose loss (an overflow in the
    # forward), are inf/NaN is skipped by the loss scaler, which halves its scale for the next
    # step. That is routine while the scale comes down from 2**16 at the start of a run, and now
    # and then later. It only keeps happening when fp16 cannot hold the run's values at all:
    # FP16_GIVE_UP skipped steps in a row with the scale already at most FP16_MIN_SCALE (no
    # headroom left to give back) raise Fp16OverflowError rather than train on without updates.
    FP16_MIN_SCALE = 1.0
    FP16_GIVE_UP = 8

    def __init__(self, config: RunConfig, task: Task, model: CLIP4VLA, dist: DistInfo, total_steps: int) -> None:
        self.config = config
        self.task = task
        self.dist = dist
        self.device = dist.device
        self.model = model
        self.loss_module = task.loss_module.to(self.device)
        if self.device.type == "cpu" and not config.model.grad_checkpointing:
            # each step reuses the last one's activation memory (clip4vla.train.cpu_memory)
            keep_freed_memory(large_blocks=config.train.precision != "fp32")
        self._trained = nn.ModuleDict({"model": model, "loss": self.loss_module})  # what the optimiser steps, by name
        # parameters the loss trains (the L2L head) may also sit inside the forward module: DDP must
        # leave them alone, the loop all-reduces their gradients itself
        in_loss = {id(p) for p in self.loss_module.parameters()}
        ignore = [name for name, p in task.forward_module.named_parameters() if id(p) in in_loss]
        trainable = nn.ModuleDict(
            {"clip": model.clip, "audio": model.audio, "heads": model.heads, "loss": self.loss_module}
        )
        # train.strategy=fsdp: the trainable towers' blocks are sharded (clip4vla.train.fsdp), and the
        # forward module runs unwrapped; otherwise DDP wraps it (a no-op on one process)
        self.sharding = Sharding.apply(model, dist, config.train.precision, trainable.parameters()) \
            if config.train.strategy == "fsdp" else None
        encode_empty_batches(self.sharding is not None)  # process-wide: an earlier FSDP run (ablation) leaves it on
        self._compiling = config.train.compile
        if config.train.compile:  # after sharding: FSDP's units are the blocks it compiles
            compile_tower_blocks(model)
        self.ddp = task.forward_module if self.sharding else wrap_ddp(task.forward_module, dist, ignore=ignore)
        oc = config.optim
        self.optimizer = build_optimizer(
            trainable, lr=oc.lr, coef_lr=oc.coef_lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas), eps=oc.eps,
            sharded=self.sharding is not None,
        )
        self.scheduler = WarmupCosine(self.optimizer, total_steps=total_steps, warmup=oc.warmup)
        scaler = ShardedGradScaler if self.sharding else torch.amp.GradScaler  # shards' overflows agree over ranks
        self.scaler = scaler(self.device.type, enabled=config.train.precision == "fp16")
        self.step = 0
        # fp16: optimiser steps the scaler skipped, in all and in a row at the floor scale (both
        # checkpointed with its state); whether this step's loss overflowed, and in which batch
        self.fp16_skipped = 0
        self._fp16_stuck = 0
        self._loss_overflow: str | None = None
        # What the config asks of every parameter group, re-applied over a resumed optimiser state
        self._group_settings = [
            {"lr": base, **{k: group[k] for k in ("weight_decay", "betas", "eps")}}
            for base, group in zip(self.scheduler.base_lrs, self.optimizer.param_groups)
        ]
        self._horizon = (self.scheduler.total_steps, self.scheduler.warmup_steps)
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue the optimisation bitwise (with the RNG state). With
        FSDP the weights and moments stay shards, for a sharded checkpoint
        (:mod:`clip4vla.train.sharded_checkpoint`); every rank calls this."""
        tensors = sharded_state(self._trained, self.optimizer) if self.sharding else {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        return {
            **tensors,
            "loss": self.loss_module.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self._scaler_state(),
            "step": self.step,
        }

    def checkpoint_bytes(self) -> int:
        """Bytes of a checkpoint: model and loss state plus AdamW's two moments per trained parameter."""
        moments = 2 * sum(p.numel() * 4 for p in self._params)
        return state_bytes(self.model.state_dict()) + state_bytes(self.loss_module.state_dict()) + moments

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # which kernels this optimiser runs (fused, multi-tensor) is this process's choice, not the
        # checkpoint's: a DDP run's fused AdamW cannot step FSDP's shards, and the reverse is slow
        kernels = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in self.optimizer.param_groups]
        if state.get("sharded"):  # a sharded checkpoint (FSDP wrote it), at any world size, either strategy
            load_sharded(Path(state["sharded_path"]), self._trained, self.optimizer, state["optimizer_groups"])
        elif self.sharding:  # full tensors (a DDP run's file): each rank takes its part
            load_full_model_state(self.model, state["model"])
            load_full_optimizer_state(self.optimizer, state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        for group, chosen in zip(self.optimizer.param_groups, kernels):
            group.update(chosen)
        self.loss_module.load_state_dict(state["loss"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._load_scaler_state(state["scaler"])
        self.step = int(state["step"])

    def apply_config_schedule(self) -> None:
        """After loading a checkpoint: this config's learning rates, decay, betas and horizon.

        ``Optimizer.load_state_dict`` and the scheduler's restore the *stored* settings; a resume
        that changed ``optim.lr`` or ``train.epochs`` would otherwise train on with the old lr (or
        at lr 0 past the old horizon). With an unchanged config this sets the same values.
        """
        groups = self.optimizer.param_groups
        if len(groups) != len(self._group_settings):
            raise CheckpointError("the checkpoint's optimiser has other parameter groups (model.train_clip changed?)")
        total, warmup = self._horizon
        self.scheduler.total_steps, self.scheduler.warmup_steps = total, warmup
        self.scheduler.base_lrs = [s["lr"] for s in self._group_settings]
        factor = warmup_cosine_factor(self.step, total, warmup)
        for group, settings in zip(groups, self._group_settings):
            group.update(weight_decay=settings["weight_decay"], betas=settings["betas"], eps=settings["eps"])
            group["initial_lr"] = settings["lr"]
            group["lr"] = settings["lr"] * factor
        self.scheduler._last_lr = [group["lr"] for group in groups]

    def _check_weights(self) -> None:
        """Stop at the step that made the weights non-finite, before any checkpoint can hold them.

        A step the fp16 loss scaler skipped leaves the weights as they were, so it never trips this.
        """
        if self.sharding:
            finite = all_finite(self._params)
        else:
            finite = bool(torch.stack([torch.isfinite(p).all() for p in self._params]).all())
        if not finite:
            bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
            raise NonFiniteWeightsError(
                f"the weights became non-finite at step {self.step} ({len(bad)} tensors, e.g. {', '.join(bad[:3])}; "
                f"lr {self.optimizer.param_groups[0]['lr']:.3g}): the learning rate is probably too high. No "
                "checkpoint of this step was written; the newest one is from before"
            )
    # -- fp16 loss scaling ---------------------------------------------------------------------

    def _scaler_state(self) -> dict[str, Any]:
        """The loss scaler's state (empty unless fp16) with its skip counters, so that both resume."""
        if not self.scaler.is_enabled():
            return {}
        return {**self.scaler.state_dict(), "skipped_steps": self.fp16_skipped, "stuck_steps": self._fp16_stuck}

    def _load_scaler_state(self, state: dict[str, Any]) -> None:
        if not state or not self.scaler.is_enabled():  # fp32/bf16 checkpoints have no scaler state
            return
        state = dict(state)
        self.fp16_skipped = int(state.pop("skipped_steps", 0))  # absent from older checkpoints
        self._fp16_stuck = int(state.pop("stuck_steps", 0))
        self.scaler.load_state_dict(state)

    def _scaler_skips(self) -> bool:
        """Whether ``scaler.step`` will skip this step: the very flags it decides on
        (``GradScaler._maybe_opt_step``), which ``unscale_`` sets when a gradient is inf/NaN. Private
        state of ``torch.amp.GradScaler``, read between ``unscale_`` and ``update`` (which clears it)."""
        found_inf = self.scaler._per_optimizer_states[id(self.optimizer)]["found_inf_per_device"]
        return bool(sum(v.item() for v in found_inf.values()))

    def _skip_for_loss_overflow(self) -> None:
        """Make the scaler skip a step whose loss overflowed. It only looks at the gradients, and an
        inf loss can have finite ones (an inf term whose gradient is not inf): one gradient is made
        NaN, so the step is skipped, and the scale lowered, exactly as for any other overflow."""
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:
            grads[0].fill_(float("nan"))

    def note_fp16_step(self, skipped: bool, scale: float) -> None:
        """Count a step the scaler skipped (``scale``: the one it used); raise if fp16 is hopeless."""
        if not skipped:
            self._fp16_stuck = 0
            return
        self.fp16_skipped += 1
        if scale <= self.FP16_MIN_SCALE:
            self._fp16_stuck += 1
        if self._fp16_stuck >= self.FP16_GIVE_UP:
            what = ("the gradients are inf/NaN even at that scale" if not self._loss_overflow else
                    f"the loss itself is inf/NaN (a forward overflow; batch video ids: {self._loss_overflow})")
            raise Fp16OverflowError(
                f"fp16 overflowed on {self._fp16_stuck} steps in a row up to step {self.step}, with the loss scale "
                f"already at {scale:g} (at most {self.FP16_MIN_SCALE:g}): {what}. fp16 cannot represent this run: "
                "train it with train.precision=bf16 (or fp32 where bf16 is unsupported, e.g. a V100); the skipped "
                "steps left the weights unchanged, so --resume --allow-config-change --set train.precision=bf16 "
                "continues from the newest checkpoint"
            )

    def fp16_summary(self) -> str:
        return (f"fp16: the loss scaler skipped {self.fp16_skipped} of {self.step} optimiser steps (inf/NaN "
                f"gradients or loss); loss scale now {self.scaler.get_scale():g}")

    # -- one optimiser step --------------------------------------------------------------------

    def _checked_loss(self, features: Features, batches: list[Batch]) -> tuple[torch.Tensor, dict[str, Any]]:
        total, parts = self.task.loss(features, batches)
        finite = torch.tensor(float(torch.isfinite(total)), device=self.device)
        if all_reduce_mean(finite).item() < 1.0:
            ids = [vid for b in batches for vid in b["video_id"]]
            shown = ", ".join(ids[:16]) + (" ..." if len(ids) > 16 else "")
            if self.scaler.is_enabled():
                # fp16: an overflow in the forward, which fp32/bf16 cannot have, not a bad batch or a
                # diverged run: the scaler would skip the step anyway (see _skip_for_loss_overflow),
                # so it is a skipped step, counted as one; note_fp16_step raises if it keeps happening.
                self._loss_overflow = shown
            else:
                raise NonFiniteLossError(f"non-finite loss at step {self.step + 1}; batch video ids: {shown}")
        return total, {**parts, "loss": total.detach()}

    def _encode(self, inputs: dict[str, torch.Tensor]) -> Features:
        with autocast(self.device, self.config.train.precision):
            return self.ddp(**inputs)

    def _frozen(self, inputs: dict[str, torch.Tensor]) -> Features:
        """Features of frozen CLIP towers: once per micro-batch, no autograd, outside DDP."""
        if not self.model.clip_frozen:
            return {}
        with torch.no_grad(), autocast(self.device, self.config.train.precision):
            return self.task.forward_module.clip_features(**inputs)

    def train_step(self, micro_batches: list[Batch]) -> dict[str, float | None]:
        """Forward/backward over ``accum_steps`` micro-batches, then one optimiser step (fp16: ``None``
        for the grad_norm of a step the loss scaler skipped, and for a loss that overflowed)."""
        started = time.perf_counter()
        try:
            out = self._train_step(micro_batches)
            if self._compiling:  # the compile time, said once (compiling happens in the first step)
                self._compiling = False
                log.info("train.compile: the first step took %.1f s, compiling included", time.perf_counter() - started)
            return out
        except RuntimeError as err:
            if is_distributed() and is_timeout(err):  # a rank stopped answering: say which
                raise name_missing_ranks(err) from err
            raise

    def _train_step(self, micro_batches: list[Batch]) -> dict[str, float | None]:
        self.optimizer.zero_grad(set_to_none=True)
        self._loss_overflow = None
        inputs = [self.task.inputs(b) for b in micro_batches]
        if len(inputs) == 1:
            features = {**self._frozen(inputs[0]), **self._encode(inputs[0])}
            total, parts = self._checked_loss(features, micro_batches)
            self.scaler.scale(total).backward()
        elif self.task.batch_coupled:
            # every accumulated sample stays a negative: cache features, then re-encode with autograd
            _, parts = cached_accumulation_step(
                self._encode, inputs, lambda feats: self._checked_loss(feats, micro_batches),
                no_sync=self._no_sync(), frozen_encode_fn=self._frozen, scale_loss=self.scaler.scale,
            )
        else:
            parts = self._independent_accumulation(inputs, micro_batches)
        # Modules of the loss live outside DDP (the loss is taken on gathered features); with FSDP
        # every replicated parameter is averaged here (the loss's among them)
        if self.sharding:
            self.sharding.sync_replicated_grads()
        else:
            all_reduce_grads_mean(self.loss_module.parameters())
        fp16 = self.scaler.is_enabled()
        if self._loss_overflow:
            self._skip_for_loss_overflow()
        self.scaler.unscale_(self.optimizer)
        clip = fsdp_clip_grad_norm if self.sharding else torch.nn.utils.clip_grad_norm_
        grad_norm = clip(self._params, self.config.optim.grad_clip)
        skipped = fp16 and self._scaler_skips()
        scale = self.scaler.get_scale()  # the one this step used (update() changes it)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # the schedule counts loop steps, skipped or not (torch warns when the first one is skipped)
        with warnings.catch_warnings() if skipped else contextlib.nullcontext():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.step += 1
        if fp16:
            self.note_fp16_step(skipped, scale)
        self._check_weights()
        # Each rank's loss is its share of the global-batch loss (scaled so that the mean over
        # ranks is the global value): log that mean, so the numbers do not depend on world size.
        names = list(parts)
        values = torch.stack([torch.as_tensor(parts[k], dtype=torch.float32, device=self.device).reshape(()) for k in names])
        out = dict(zip(names, all_reduce_mean(values).tolist()))
        out["grad_norm"] = float(grad_norm)
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        if fp16:
            if skipped:
                # A skipped step took no gradient: its grad_norm is logged as null (kept, not left
                # out, so every training row has the same keys), and so is a loss the forward
                # overflowed: metrics.jsonl stays strict JSON, without NaN or Infinity.
                out = {k: v if math.isfinite(v) else None for k, v in out.items()}
                out["grad_norm"] = None
            out["fp16_skipped"] = self.fp16_skipped  # so far in the run
            out["fp16_scale"] = self.scaler.get_scale()  # after this step's update: the next step's
        return out

    def _no_sync(self) -> Callable[[], contextlib.AbstractContextManager] | None:
        """The context that skips gradient synchronisation on accumulation micro-steps (or None)."""
        return self.sharding.no_sync if self.sharding else no_sync_factory(self.ddp)

    def _independent_accumulation(self, inputs: list[dict[str, torch.Tensor]], batches: list[Batch]) -> dict[str, Any]:
        """Plain gradient accumulation (losses that do not couple samples): mean of micro-batch losses."""
        n = len(inputs)
        no_sync = self._no_sync()
        summed: dict[str, torch.Tensor] = {}
        for i, (inp, batch) in enumerate(zip(inputs, batches)):
            ctx = no_sync() if (no_sync is not None and i < n - 1) else contextlib.nullcontext()
            with ctx:
                features = {**self._frozen(inp), **self._encode(inp)}
                total, parts = self._checked_loss(features, [batch])
                self.scaler.scale(total / n).backward()
            for k, v in parts.items():
                summed[k] = summed.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float32).detach() / n
        return summed

class TrainingInterrupted(Exception):
    """SIGTERM (a scheduler's pre-emption): the run saved its step and stopped; resume it.

    The message tells a training script's user how to continue; a driver of many runs (the
    ablation) says it in its own terms from ``step`` and ``total_steps``.
    """

    def __init__(self, message: str, step: int = 0, total_steps: int = 0) -> None:
        super().__init__(message)
        self.step, self.total_steps = step, total_steps


class Trainer:
    """Owns everything a run needs; ``fit()`` trains, validates, checkpoints and returns test metrics.

    ``task`` is a :class:`Task` subclass (or a factory ``(config, dist) -> Task``). ``resume``
    continues the newest usable checkpoint in ``train.output_dir`` (``clip4vla.train.resume`` says
    what a resume may change; ``allow_config_change`` lets it change the rest). Without ``resume``
    an output folder that holds another run's checkpoints is refused unless ``overwrite``.
    """

    def __init__(
        self,
        config: RunConfig,
        task: Callable[[RunConfig, DistInfo], Task],
        resume: bool = False,
        dist: DistInfo | None = None,
        *,
        overwrite: bool = False,
        allow_config_change: bool = False,
    ) -> None:
        check_trainable(config)
        self.config = config
        tc = config.train
        self.dist = dist or init_distributed(
            device=None if tc.device == "auto" else tc.device, timeout_s=tc.dist_timeout_s
        )
        self.device = self.dist.device
        self.out_dir = Path(tc.output_dir)
        if tc.batch_size % self.dist.world_size:
            raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the {self.dist.world_size} ranks")
        self.local_batch = tc.batch_size // self.dist.world_size
        self.task = task(config, self.dist)
        self.folder = RunFolder(self.out_dir, self.dist, tc.keep_last, tensorboard=tc.tensorboard)
        try:
            self._start(resume, overwrite, allow_config_change)
        except BaseException:
            self.folder.release()
            self.folder.discard_if_unused()
            raise

    def _start(self, resume: bool, overwrite: bool, allow_config_change: bool) -> None:
        config, tc = self.config, self.config.train
        # Before any data or model work: what to resume, whether the config may resume it, and
        # the file the model starts from (a resume takes every weight from its checkpoint).
        self._resume_from = self.folder.resume_state(self.task.name, config, allow_config_change) if resume else None
        if not resume:
            self.folder.claim(overwrite)
        start = start_file(config, self.task, self._resume_from)
        # frames at the model's resolution, known from its file before any data is read (issue 20)
        self.task.options.inputs = inputs_for_model(self.task.options.inputs, config.model, start)
        check_precision(tc.precision, self.device)
        if tc.compile:
            check_compiler(self.device)
        self.best = BestWeights(self.folder, *selection(config, self.task))
        self.export = tc.export or self.task.export
        torch.manual_seed(tc.seed)
        if self._resume_from is None:  # a resume writes it in _restore, unless the run is finished
            self.folder.write_config(config)
        data = self.task.datasets()
        self.train_set, self.val_set, self.test_set = data.train, data.val, data.test

        self.model = build_model(config.model, start).to(self.device)
        del start
        self.task.setup(self.model)
        drop_untrained_heads(self.model, self.task, self.dist.is_main)
        self.model.preprocessing = self.task.preprocessing()

        self.sampler = ResumableShardedSampler(data.train_order, self.local_batch, self.dist.rank, self.dist.world_size)
        self.steps_per_epoch, self.total_steps = run_length(tc, self.sampler.batches_per_epoch, len(self.train_set))
        # a finished run that is resumed (to print its results again) only needs the test, and once
        # its model folder is written it writes nothing
        done = self._resume_from is not None and int(self._resume_from[0]["step"]) >= self.total_steps
        self._finished = done and self.folder.has_model
        if config.data.cache_decoded and config.data.num_workers == 0:
            fill_caches(data, self.dist.world_size, self.dist.is_main, training=not done)
        self.stepper = Stepper(config, self.task, self.model, self.dist, self.total_steps)
        self.skips = SkipReport()
        self.sigterm = SigtermStop()
        self._model_bytes = state_bytes(self.model.state_dict())
        if self.dist.is_main and not self._finished:
            check_writable(self.folder.checkpoints.directory, self.stepper.checkpoint_bytes(), tc.keep_last)
        if self._resume_from is not None:
            self._restore(*self._resume_from)
            self._resume_from = None
        else:
            self.folder.write_history()  # a fresh run starts a fresh log

    # -- checkpoints ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            **model_record(self.model, self.model.preprocessing),
            **self.stepper.state_dict(),
            "rng": capture_rng_state(),
            "config": config_to_dict(self.config),
            "skipped": self.skips.count,
            "history": self.folder.history,
            "best": self.best.best,
        }

    def _restore(self, state: dict[str, Any], path: Path, changes: dict[str, tuple]) -> None:
        """Load a checkpoint's state, then make the config's (allowed) changes take effect."""
        check_architecture(state["architecture"], model_record(self.model, self.model.preprocessing)["architecture"],
                           path)
        stepper = self.stepper
        stepper.load_state_dict(state)
        self.skips.count = int(state.get("skipped", 0))
        self.folder.history = list(state.get("history", []))
        self.best.best = state.get("best")
        restore_rng_state(state["rng"])
        old_end = int(state["scheduler"].get("total_steps", self.total_steps))
        stepper.apply_config_schedule()  # the optimiser settings and horizon of *this* config
        if changes:
            log.warning("resumed with config changes: %s", "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
            self.folder.history.append({"step": self.step, "event": "resume",
                                        "changed": {k: [a, b] for k, (a, b) in changes.items()}})
        if old_end != self.total_steps:
            log.warning("the schedule now ends at step %d (was %d); lr at step %d: %.3g",
                        self.total_steps, old_end, self.step, stepper.optimizer.param_groups[0]["lr"])
        if not self._finished:
            self.folder.write_config(self.config)
            # The log is cut back to the restored state: rows written after this checkpoint are
            # recomputed, so every step appears once, as if the run had never stopped.
            self.folder.write_history()
        log.info("resumed from %s at step %d", path, self.step)

    # -- data ----------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.stepper.step

    def train_step(self, micro_batches: list[Batch]) -> dict[str, float]:
        return self.stepper.train_step(micro_batches)

    def close(self) -> None:
        """Release the folder and the process group; the DDP wrapper must go first or gloo may
        abort at exit."""
        self.folder.release()
        self.stepper.ddp = None
        cleanup()

    # -- the run -------------------------------------------------------------------------------

    def _epoch_micro_batches(self, epoch: int, start_step: int) -> Iterator[list[Batch]]:
        accum = self.config.train.accum_steps
        group: list[Batch] = []
        for batch in epoch_batches(self.train_set, self.sampler, self.local_batch, self.config.data.num_workers,
                                   self.device, epoch, start_step * accum):
            self.skips.update(batch)
            group.append(batch)
            if len(group) == accum:
                yield group
                group = []

    def _due(self, every_steps: int, epoch_end: bool, every_epochs: int, epoch: int) -> bool:
        """Whether a cadence (every N steps, else every N epochs) falls on the step just taken."""
        if self.step == self.total_steps:
            return True
        if every_steps:
            return self.step % every_steps == 0
        return epoch_end and (epoch + 1) % every_epochs == 0

    def fit(self) -> dict[str, Any]:
        """Train to the end of the schedule, then test; SIGTERM saves the step and stops the run.

        A scheduler's SIGTERM (SLURM, Kubernetes pre-emption) is honoured at the next step
        boundary on every rank: a checkpoint of that step is written and
        :class:`TrainingInterrupted` is raised (the scripts exit with status 143); ``--resume``
        continues bitwise where it stopped. A second SIGTERM kills at once.
        """
        try:
            return self._fit()
        finally:
            self.folder.release()

    def _fit(self) -> dict[str, Any]:
        with self.sigterm.installed():
            self._train()
        if self.skips.count:
            log.warning("data: %s", self.skips.summary())
        if self.stepper.scaler.is_enabled():
            log.log(logging.WARNING if self.stepper.fp16_skipped else logging.INFO, "%s", self.stepper.fp16_summary())
        model = self._main_model()
        if self.export == "best" and self.dist.is_main:
            self.best.load_into(model, validated=self.val_set is not None)
        result = self.evaluate(self.test_set, "test", model)
        if self.dist.is_main and not self._finished:
            if result.get("metrics"):  # the final test table, in the log (and the dashboard) too
                self.folder.log_row({"step": self.step, **{f"test/{k}": v for k, v in result["metrics"].items()}})
            sizes = {name: len(ds) for name, ds in (("train", self.train_set), ("val", self.val_set),
                                                     ("test", self.test_set)) if ds is not None}
            card = run_card(self.config, self.task, model, sizes, result, self.step, self.export)
            self.folder.export(model, result, self._model_bytes, card, task=self.task.name, step=self.step,
                               weights=self.export)
            self.folder.write_history()
            plot_metrics(self.folder.history, self.out_dir / "loss_curves.png", loss_keys=self.task.loss_keys,
                         title=f"{self.task.name} losses")
        barrier()
        if result:
            result["skipped"] = self.skips.count
            if self.stepper.scaler.is_enabled():
                result["fp16_skipped"] = self.stepper.fp16_skipped
        return result

    def _train(self) -> None:
        self.task.forward_module.train()
        start_epoch, start_in_epoch = divmod(self.step, self.steps_per_epoch)
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc=self.task.name, disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        try:
            self._train_epochs(bar, start_epoch, start_in_epoch)
        finally:
            bar.close()

    def _train_epochs(self, bar: tqdm, start_epoch: int, start_in_epoch: int) -> None:
        tc = self.config.train
        t_last, samples_since = time.perf_counter(), 0
        for epoch in range(start_epoch, tc.epochs):
            if self.step >= self.total_steps:
                break
            first = start_in_epoch if epoch == start_epoch else 0
            for micro_batches in self._epoch_micro_batches(epoch, first):
                metrics = self.train_step(micro_batches)
                samples_since += tc.batch_size * tc.accum_steps
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    metrics["samples_per_s"] = samples_since / max(now - t_last, 1e-9)
                    metrics["skipped"] = self.skips.count
                    t_last, samples_since = now, 0
                    loss = "skipped" if metrics["loss"] is None else f"{metrics['loss']:.3f}"  # fp16 overflow
                    bar.set_postfix(loss=loss, sps=f"{metrics['samples_per_s']:.1f}")
                    self.folder.log_row({"step": self.step, "epoch": epoch, **metrics})
                epoch_end = self.step % self.steps_per_epoch == 0
                if self._due(tc.eval_every_steps, epoch_end, tc.eval_every_epochs, epoch):
                    self._validate(epoch)
                saved = self._due(tc.checkpoint_every_steps, epoch_end, 1, epoch)
                if saved:
                    self.folder.save_checkpoint(self.step, self._state, sharded=self.stepper.sharding is not None)
                if self.sigterm.requested(self.device):
                    if not saved:
                        self.folder.save_checkpoint(self.step, self._state, sharded=self.stepper.sharding is not None)
                    raise TrainingInterrupted(
                        f"SIGTERM: stopped after step {self.step} of {self.total_steps}; its checkpoint is in "
                        f"{self.folder.checkpoints.directory}. Continue with --resume", self.step, self.total_steps
                    )
                if self.step >= self.total_steps:
                    break

    def _validate(self, epoch: int) -> None:
        if self.val_set is None:
            return
        model = self._main_model()
        result = self.evaluate(self.val_set, "val", model)
        if not self.dist.is_main:
            return
        metrics = result["metrics"]
        self.folder.log_row({"step": self.step, "epoch": epoch, **{f"val/{k}": v for k, v in metrics.items()}})
        shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()
                          if k in self.task.shown_metrics or k == self.best.metric)
        tqdm.write(f"[val] step {self.step}: {shown}")
        self.best.offer(self.step, metrics, lambda: {"task": self.task.name, "model": model.state_dict(),
                                                     **model_record(model, model.preprocessing),
                                                     "config": config_to_dict(self.config)})

    def _main_model(self) -> CLIP4VLA | None:
        """What the main rank evaluates, selects and exports (None on the other ranks): the model
        itself, or under FSDP an unsharded copy built from the gathered weights (the gathering takes
        every rank, so every rank calls this)."""
        if self.stepper.sharding is None:
            return self.model if self.dist.is_main else None
        state = full_model_state(self.model)
        return unsharded_copy(self.model, state) if self.dist.is_main else None

    def evaluate(self, dataset: TriModalDataset | None, split: str, model: CLIP4VLA | None = None) -> dict[str, Any]:
        """The task's evaluation of ``model`` (:meth:`_main_model`) on ``dataset``, on the main rank
        (``{}`` elsewhere or without a dataset)."""
        result: dict[str, Any] = {}
        if dataset is not None and self.dist.is_main:
            model = model if model is not None else self.model
            self.task.forward_module.eval()
            model.eval()
            with torch.no_grad():
                result = self.task.evaluate(model, dataset, split)
            self.task.forward_module.train()
            model.train()
        barrier()
        return result
