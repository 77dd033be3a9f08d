"""The pre-training loop: data -> tri-encoder -> NCE losses -> AdamW, with resumable checkpoints.

The loop is written out rather than hidden in a framework so that what one optimiser step does
is readable top to bottom in ``Pretrainer.train_step``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from clip4vla.config import PretrainConfig, config_to_dict, save_config
from clip4vla.data.dataset import SkipReport, TriModalDataset, collate_samples, usable_rows
from clip4vla.data.sampler import ResumableShardedSampler
from clip4vla.evaluation.zero_shot import zero_shot_retrieval
from clip4vla.losses import PretrainLoss
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.train.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from clip4vla.train.data_setup import build_pretrain_datasets
from clip4vla.train.distributed import (
    DistInfo,
    all_reduce_grads_mean,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    no_sync_factory,
    wrap_ddp,
)
from clip4vla.train.grad_cache import cached_accumulation_step
from clip4vla.models.factory import build_model
from clip4vla.train.optim import WarmupCosine, build_optimizer
from clip4vla.train.plotting import plot_metrics

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised (on every rank together) when the loss of a step is NaN or inf."""


class PretrainForward(nn.Module):
    """Batch tensors -> global features; the module DDP wraps, so gradients sync through forward.

    Frozen towers (paper default) run under ``no_grad``: no activations are kept for them.
    """

    def __init__(self, model: CLIP4VLA, train_clip: bool) -> None:
        super().__init__()
        self.model = model
        self.train_clip = train_clip

    def forward(
        self,
        text: torch.Tensor,  # [B, max_words]
        frames: torch.Tensor,  # [B, F, 3, H, W]
        frame_mask: torch.Tensor,  # [B, F]
        audio: torch.Tensor,  # [B, L, 3, 224, 224]
        audio_mask: torch.Tensor,  # [B, L]
        audio_type: torch.Tensor,  # [B]
        masked_audio: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        with torch.set_grad_enabled(self.train_clip and torch.is_grad_enabled()):
            text_features = self.model.encode_text(text)
            _, video_features = self.model.encode_video(frames, frame_mask)
        if masked_audio is None:
            _, audio_features = self.model.encode_audio(audio, audio_mask, audio_type)
            return {"text": text_features, "video": video_features, "audio": audio_features}
        # Two calls rather than one on torch.cat([audio, masked_audio]): that copy of the pixel
        # batch cost more than the second call's overhead (measured on CPU with the tiny model).
        _, clean = self.model.encode_audio(audio, audio_mask, audio_type)
        _, masked = self.model.encode_audio(masked_audio, audio_mask, audio_type)
        return {"text": text_features, "video": video_features, "audio": clean, "masked_audio": masked}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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


class Pretrainer:
    """Owns everything a run needs; ``fit()`` trains, validates, checkpoints and returns test metrics."""

    def __init__(self, config: PretrainConfig, resume: bool = False, dist: DistInfo | None = None) -> None:
        self.config = config
        self.dist = dist or init_distributed(device=None if config.train.device == "auto" else config.train.device)
        self.device = self.dist.device
        self.out_dir = Path(config.train.output_dir)
        tc = config.train
        if tc.batch_size % self.dist.world_size:
            raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the {self.dist.world_size} ranks")
        self.local_batch = tc.batch_size // self.dist.world_size
        if tc.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision=bf16 is not supported by this GPU (V100: use fp16)")
        if tc.precision == "bf16" and self.device.type == "cpu":
            slowdown = cpu_bf16_slowdown()
            if slowdown > 4.0:
                log.warning(
                    "train.precision=bf16: a bf16 matmul is %.0fx slower than fp32 on this CPU (no bf16 "
                    "instructions), so training will be far slower than with train.precision=fp32", slowdown
                )

        torch.manual_seed(tc.seed)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out_dir / "config.yaml")
        data = build_pretrain_datasets(config, self.dist)
        self.train_set, self.val_set, self.test_set = data.train, data.val, data.test
        if config.data.cache_decoded and config.data.num_workers == 0:
            self._fill_caches()

        self.model = build_model(config.model).to(self.device)
        self.loss_fn = PretrainLoss(
            intra_modal=config.loss.intra_modal,
            learnable_scale=config.loss.learnable_scale,
            init_scale=config.loss.init_scale,
            ref_extras=config.loss.ref_extras,
            text_video=config.loss.text_video,
        ).to(self.device)
        self.forward_module = PretrainForward(self.model, config.model.train_clip)
        self.ddp = wrap_ddp(self.forward_module, self.dist)

        self.sampler = ResumableShardedSampler(data.train_order, self.local_batch, self.dist.rank, self.dist.world_size)
        self.steps_per_epoch = self.sampler.batches_per_epoch // tc.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"an epoch of {len(self.train_set)} samples does not fill one step of "
                f"{tc.batch_size} x {tc.accum_steps} accumulation steps"
            )
        self.total_steps = tc.epochs * self.steps_per_epoch
        if tc.max_steps:
            self.total_steps = min(self.total_steps, tc.max_steps)

        trainable = nn.ModuleDict({"clip": self.model.clip, "audio": self.model.audio, "loss": self.loss_fn})
        oc = config.optim
        self.optimizer = build_optimizer(
            trainable, lr=oc.lr, coef_lr=oc.coef_lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas), eps=oc.eps
        )
        self.scheduler = WarmupCosine(self.optimizer, total_steps=self.total_steps, warmup=oc.warmup)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
        self.checkpoints = CheckpointManager(self.out_dir / "checkpoints", keep_last=tc.keep_last)
        self.skips = SkipReport()
        self.step = 0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._resume()

    def _fill_caches(self) -> None:
        """Decode the cached splits once, in parallel, before the first step (see ``fill_cache``)."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = cpus // self.dist.world_size
        workers = workers if workers > 1 else 0  # a single worker would only add the hand-over
        with _torch_threads(1):  # in-process decoding is faster single-threaded (see _batches)
            self.train_set.fill_cache(workers, progress=self.dist.is_main)
            if self.dist.is_main:  # only the main rank evaluates
                for dataset in (self.val_set, self.test_set):
                    if dataset is not None:
                        dataset.fill_cache(workers)

    # -- checkpoints ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": capture_rng_state(),
            "config": config_to_dict(self.config),
            "skipped": self.skips.count,
        }

    def _resume(self) -> None:
        loaded = self.checkpoints.load_latest()
        if loaded is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.checkpoints.directory)
            return
        state, path = loaded
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.skips.count = int(state.get("skipped", 0))
        restore_rng_state(state["rng"])
        metrics_path = self.out_dir / "metrics.jsonl"
        if metrics_path.exists():
            # Keep the log consistent with the restored state: drop lines written after the checkpoint.
            rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r.get("step", 0) <= self.step]
        log.info("resumed from %s at step %d", path, self.step)

    def _save_checkpoint(self) -> None:
        if self.dist.is_main:
            self.checkpoints.save(self.step, self._state())
            self._write_history()
        barrier()

    def _write_history(self) -> None:
        tmp = self.out_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(row) + "\n" for row in self.history))
        tmp.replace(self.out_dir / "metrics.jsonl")

    # -- data ----------------------------------------------------------------------------------

    def _batches(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_batch)
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=self.local_batch,
            sampler=self.sampler,
            num_workers=self.config.data.num_workers,
            collate_fn=collate_samples,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )
        if self.config.data.num_workers > 0:
            yield from loader
            return
        # In-process loading: decoding and the front-end are many small ops for which intra-op
        # threads cost more than they save (measured 6x slower with 2 threads on 2 cores), as
        # DataLoader workers already know (they run with one thread). Compute gets them back.
        batches = iter(loader)
        while True:
            with _torch_threads(1):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def _to_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        keys = ["text", "frames", "frame_mask", "audio", "audio_mask", "audio_type"]
        if self.config.loss.intra_modal:
            keys.append("masked_audio")
        return {k: batch[k].to(self.device, non_blocking=True) for k in keys}

    # -- one optimiser step --------------------------------------------------------------------

    def _loss_over(self, features: dict[str, torch.Tensor], valid: torch.Tensor, ids: list[str]):
        features = {k: v.float() for k, v in features.items()}
        total, parts = self.loss_fn(
            features["text"], features["video"], features["audio"], features.get("masked_audio"), valid=valid
        )
        finite = torch.tensor(float(torch.isfinite(total)), device=self.device)
        if all_reduce_mean(finite).item() < 1.0:
            shown = ", ".join(ids[:16]) + (" ..." if len(ids) > 16 else "")
            raise NonFiniteLossError(f"non-finite loss at step {self.step + 1}; batch video ids: {shown}")
        return total, parts

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """Forward/backward over ``accum_steps`` micro-batches (all of them serve as negatives), then step."""
        tc = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        ids = [vid for b in micro_batches for vid in b["video_id"]]
        valid = torch.cat([usable_rows(b) for b in micro_batches]).to(self.device)
        inputs = [self._to_inputs(b) for b in micro_batches]

        def encode(batch_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            with _autocast(self.device, tc.precision):
                return self.ddp(**batch_inputs)

        def loss_over(features: dict[str, torch.Tensor]):
            total, parts = self._loss_over(features, valid, ids)
            return total, {**parts, "loss": total.detach()}

        if len(inputs) == 1:
            total, parts = loss_over(encode(inputs[0]))
            self.scaler.scale(total).backward()
        else:
            _, parts = cached_accumulation_step(
                encode, inputs, loss_over, no_sync=no_sync_factory(self.ddp), scale_loss=self.scaler.scale
            )
        # The logit scale lives outside DDP (the loss is taken on gathered features).
        all_reduce_grads_mean(self.loss_fn.parameters())
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        # Each rank's loss is its share of the global-batch loss (scaled so that the mean over
        # ranks is the global value): log that mean, so the numbers do not depend on world size.
        names = list(parts)
        values = torch.stack([torch.as_tensor(parts[k], dtype=torch.float32, device=self.device).reshape(()) for k in names])
        out = dict(zip(names, all_reduce_mean(values).tolist()))
        out["grad_norm"] = float(grad_norm)
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def close(self) -> None:
        """Release the process group; the DDP wrapper must go first or gloo may abort at exit."""
        self.ddp = None
        cleanup()

    # -- the run -------------------------------------------------------------------------------

    def _epoch_micro_batches(self, epoch: int, start_step: int) -> Iterator[list[dict[str, Any]]]:
        accum = self.config.train.accum_steps
        group: list[dict[str, Any]] = []
        for batch in self._batches(epoch, start_step * accum):
            self.skips.update(batch)
            group.append(batch)
            if len(group) == accum:
                yield group
                group = []

    def fit(self) -> dict[str, Any]:
        tc = self.config.train
        self.forward_module.train()
        start_epoch, start_in_epoch = divmod(self.step, self.steps_per_epoch)
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="pretrain", disable=not self.dist.is_main, dynamic_ncols=True
        )
        checkpoint_every = tc.checkpoint_every_steps or self.steps_per_epoch
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
                    t_last, samples_since = now, 0
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}", sps=f"{metrics['samples_per_s']:.1f}")
                    self.history.append({"step": self.step, "epoch": epoch, **metrics})
                if self.step % checkpoint_every == 0 or self.step == self.total_steps:
                    if (self.step % self.steps_per_epoch == 0 or self.step == self.total_steps) and (
                        (epoch + 1) % tc.eval_every_epochs == 0 or self.step == self.total_steps
                    ):
                        self._validate(epoch)
                    self._save_checkpoint()
                if self.step >= self.total_steps:
                    break
        bar.close()
        if self.skips.count:
            log.warning("data: %s", self.skips.summary())
        result = self.evaluate(self.test_set, "test")
        if self.dist.is_main:
            self._write_history()
            plot_metrics(self.history, self.out_dir / "loss_curves.png")
        return result

    def _validate(self, epoch: int) -> None:
        if self.val_set is None:
            return
        metrics = self.evaluate(self.val_set, "val")
        if self.dist.is_main:
            flat = {f"val/{task}/{k}": v for task, m in metrics["retrieval"].items() for k, v in m.items()}
            self.history.append({"step": self.step, "epoch": epoch, **flat})
            summary = "  ".join(f"{task} R@1 {m['R1']:.1f}" for task, m in metrics["retrieval"].items())
            tqdm.write(f"[val] step {self.step}: {summary}  (chance R@1 {metrics['chance']['R1']:.1f})")

    def evaluate(self, dataset: TriModalDataset | None, split: str) -> dict[str, Any]:
        """Zero-shot text->audio, video->audio and text->video retrieval, on the main rank."""
        result: dict[str, Any] = {}
        if dataset is not None and self.dist.is_main:
            self.forward_module.eval()
            result = zero_shot_retrieval(
                self.model, dataset, batch_size=self.local_batch, device=self.device, precision=self.config.train.precision
            )
            result["split"] = split
            self.forward_module.train()
        barrier()
        return result
