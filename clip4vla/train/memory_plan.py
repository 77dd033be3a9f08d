"""What fits where: peak GPU memory per rank of a pre-training step, and the largest batch that fits.

An *estimate*, not yet confirmed on a GPU. The peak of one rank is modelled as

    model states + activations(batch) + a fixed CUDA overhead  <=  usable GPU memory

* **Parameters** are counted exactly from the CLIP4VLA of the backbone, built on the ``meta``
  device (text + vision towers and the audio encoder copied from the vision tower).
* **Model states**: fp32 weights (4 B per parameter, every tower), fp32 gradients (4 B) and
  AdamW's two fp32 moments (8 B) for the trained parameters only. bf16 / fp16 here is autocast
  mixed precision: the fp32 masters stay, so the states do not change with precision.
  ``model.train_clip: false`` (the paper) trains the audio encoder only; the frozen text and
  vision towers hold weights only and run under ``no_grad``.
* **DDP**: every rank holds all states plus DDP's gradient buckets (about one more gradient copy).
  **FSDP** (``fully_shard`` per trained transformer block, ``clip4vla/train/fsdp.py``): the blocks'
  states / ranks, the rest (embeddings, norms, projections: a few percent) and frozen towers whole
  on every rank, plus the largest block's unsharded parameters and gradients in flight (8 B per
  parameter), twice (the prefetched next block).
* **Activations** per sample are *measured* on the CPU (the tensors a GPU keeps are the same):
  each tower runs a forward on 1 and 2 items (a frame, an audio segment, a caption) under
  ``torch.autograd.graph.saved_tensors_hooks`` summing the bytes of the storages saved for
  backward (parameters excluded, storages counted once); the difference is the bytes per item,
  the rest the per-step constant (autocast's half-precision weight copies). A pre-training
  sample is 12 frames, 10 audio segments plus their masked copy and a 32-token caption
  (:data:`SAMPLE`). fp16 saves the same sizes as bf16. With activation checkpointing a block
  keeps only its input; backward then recomputes one block at a time, so one block's saved
  tensors (measured per block) are added back; without checkpointing the same allowance stands
  for the activation gradients of the block in backward. Frozen towers save nothing but need a
  transient forward working set (three times their largest intermediate tensor, an assumption),
  which comes before the trained towers' forward and so does not add to it. The input pixels
  (fp32) count too. Measurements are cached in ``benchmarks/activation_memory.json``.
* **Overhead**: a fixed :data:`CUDA_OVERHEAD_GIB` per rank (CUDA context, cuBLAS/cuDNN/NCCL
  workspaces; an assumption), and the usable memory is the card's total less
  :data:`FRAGMENTATION_MARGIN` (allocator fragmentation; an assumption).

Where the CPU measurement may differ from a GPU: CPU autocast's per-op precision lists are not
CUDA's (e.g. which ops run in fp32), and the attention kernels differ (both save the output and
the log-sum-exp, not the attention matrix). The towers are measured with QuickGELU (OpenAI's
weights); open_clip's GELU models save somewhat less. FSDP under bf16 gathers its blocks in bf16
(no autocast weight copies), so the per-step copies counted here overstate it slightly.
``benchmarks/gpu_check.sh`` prints each run's measured peak next to this estimate.

Not modelled: the contrastive loss's gathered features (``[ranks x batch, 512-768]``, kilobytes
to a few MB), the temporaries of AdamW's foreach step and of gradient clipping (after the
backward has freed the activations), ``torch.compile`` workspaces, evaluation, the data loader's
pinned host memory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.open_clip_format import OPEN_CLIP_VITS

__all__ = [
    "BACKBONES", "CUDA_OVERHEAD_GIB", "FRAGMENTATION_MARGIN", "GPUS", "SAMPLE", "MemoryPlan", "ParameterCounts",
    "backbone_config", "count_parameters", "largest_batch", "measure_activations", "measure_step", "plan",
]

GIB = 2**30
# nvidia-smi's total memory of each card (MiB): what the driver reports, below the nominal size.
GPUS: dict[str, int] = {
    "V100-16GB": 16160,
    "V100-32GB": 32510,
    "A100-40GB": 40960,
    "A100-80GB": 81920,
    "H100-80GB": 81559,
}
FRAGMENTATION_MARGIN = 0.05  # of the total: the caching allocator's fragmentation (assumption)
CUDA_OVERHEAD_GIB = 1.0  # per rank: CUDA context + cuBLAS / cuDNN / NCCL workspaces (assumption)
BACKBONES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")
PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp")
# What one pre-training sample encodes (data.max_frames, audio.max_segments x 2 for the masked copy
# of the intra-modal loss, data.max_words): the paper's defaults and this repository's.
SAMPLE = {"frames": 12, "audio_segments": 2 * 10, "captions": 1, "words": 32}
AUDIO_SIDE = 224


def backbone_config(name: str) -> CLIPConfig:
    """open_clip's name (``ViT-L-14-336``) -> the CLIP's shapes."""
    if name not in OPEN_CLIP_VITS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(OPEN_CLIP_VITS)}")
    return CLIPConfig(**OPEN_CLIP_VITS[name])


def _gpu_total_gib(gpu: str) -> float:
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    return GPUS[gpu] / 1024


def usable_gib(gpu: str) -> float:
    return _gpu_total_gib(gpu) * (1 - FRAGMENTATION_MARGIN)


# ------------------------------------------------------------------------------------ parameters


@dataclasses.dataclass(frozen=True)
class ParameterCounts:
    text: int  # the text tower (and CLIP's logit_scale)
    vision: int
    audio: int
    text_blocks: int  # of which in the tower's transformer blocks (what FSDP shards)
    vision_blocks: int
    audio_blocks: int
    largest_block: int  # one FSDP unit

    @property
    def total(self) -> int:
        return self.text + self.vision + self.audio

    def trained(self, train_clip: bool) -> int:
        return self.total if train_clip else self.audio

    def sharded(self, train_clip: bool) -> int:
        """The trained parameters FSDP shards (clip4vla/train/fsdp.py: the trained towers' blocks)."""
        return self.text_blocks + self.vision_blocks + self.audio_blocks if train_clip else self.audio_blocks


def build_meta_model(name: str) -> CLIP4VLA:
    """The CLIP4VLA of a backbone without memory (``meta`` tensors): shapes only."""
    with torch.device("meta"):
        return CLIP4VLA.from_config(backbone_config(name), audio_init="vision", use_type_token=True)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(name: str) -> ParameterCounts:
    model = build_meta_model(name)
    towers = (model.clip.transformer, model.clip.visual.transformer, model.audio.visual.transformer)
    vision, audio = _numel(model.clip.visual), _numel(model.audio)
    return ParameterCounts(text=_numel(model.clip) - vision, vision=vision, audio=audio,
                           text_blocks=_numel(towers[0]), vision_blocks=_numel(towers[1]), audio_blocks=_numel(towers[2]),
                           largest_block=max(_numel(b) for t in towers for b in t.resblocks))


# ------------------------------------------------------------------------------------ measuring


class SavedTensorMeter:
    """Bytes of the storages autograd saves for backward, each storage counted once.

    Parameters (counted as weights) and the given inputs (counted as inputs) are left out. Inside a
    transformer block (a forward pre-hook sets the flag) the bytes are also summed per block; with
    checkpointing a block's input, which the checkpoint keeps for the recomputation, is counted
    through the same pre-hook.
    """

    def __init__(self, model: nn.Module, excluded: list[torch.Tensor]) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.skip |= {t.untyped_storage().data_ptr() for t in excluded}
        self.seen: set[int] = set()
        self.total = 0
        self.in_blocks = 0
        self.depth = 0
        self.handles = []
        # the blocks of stacks that checkpoint (clip4vla.models.clip.Transformer.grad_checkpointing)
        self.checkpointed = {id(b) for m in model.modules() if getattr(m, "grad_checkpointing", False)
                             for b in m.resblocks}
        for m in model.modules():
            if type(m).__name__ == "ResidualAttentionBlock":
                self.handles.append(m.register_forward_pre_hook(self._enter))
                self.handles.append(m.register_forward_hook(self._leave))

    def _add(self, t: torch.Tensor, in_block: bool) -> None:
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.skip or key in self.seen or key == 0:
            return
        self.seen.add(key)
        self.total += storage.nbytes()
        if in_block:
            self.in_blocks += storage.nbytes()

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.depth += 1
        if id(module) in self.checkpointed and torch.is_grad_enabled():
            self._add(args[0], in_block=False)  # what a checkpointed block keeps

    def _leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.depth -= 1

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self._add(t, in_block=self.depth > 0)
        # detached (same storage): a saved output returned as itself would hold its own grad_fn, a
        # reference cycle through C++ that keeps every graph of the measurement alive
        return t.detach()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _saved_bytes(model: nn.Module, run: Callable[[], torch.Tensor], excluded: list[torch.Tensor],
                 precision: str) -> tuple[int, int]:
    """Forward of ``run`` with gradients: (saved bytes, of which inside blocks)."""
    from clip4vla.precision import autocast

    meter = SavedTensorMeter(model, excluded)
    try:
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            with autocast(torch.device("cpu"), precision):
                out = run()
        del out
    finally:
        meter.close()
    return meter.total, meter.in_blocks


def _largest_intermediate(model: nn.Module, run: Callable[[], torch.Tensor]) -> int:
    """Under no_grad: the bytes of the largest tensor any submodule returns (a frozen tower's forward)."""
    largest = [0]

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def _tower_runs(config: CLIPConfig, tower: str, n: int, gen: torch.Generator,
                built: dict[str, nn.Module]) -> tuple[nn.Module, Callable[[], torch.Tensor], list[torch.Tensor]]:
    """A tower of ``config`` (built once, one at a time to bound the memory), a closure encoding ``n``
    items and its input tensors."""
    from clip4vla.models.audio import AudioEncoder
    from clip4vla.models.clip import CLIP

    want = "audio" if tower == "audio" else "clip"
    if want not in built:
        built.clear()
        torch.manual_seed(0)
        # the audio encoder's shapes are the same whether copied from the vision tower or not
        built[want] = AudioEncoder.scratch(config, use_type_token=True) if want == "audio" else CLIP(config)
    module = built[want]
    if tower == "text":
        tokens = torch.randint(1, 49406, (n, SAMPLE["words"]), generator=gen)
        tokens[:, -1] = 49407  # EOT
        return module, lambda: module.encode_text(tokens), [tokens]
    if tower == "vision":
        frames = torch.randn(n, 3, config.image_resolution, config.image_resolution, generator=gen)
        return module.visual, lambda: module.encode_image(frames), [frames]
    segments = torch.randn(1, n, 3, AUDIO_SIDE, AUDIO_SIDE, generator=gen)
    mask, audio_type = torch.ones(1, n, dtype=torch.bool), torch.zeros(1, dtype=torch.long)
    return module, lambda: module(segments, mask, audio_type)[1], [segments]


def measure_activations(name: str, precision: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Saved-for-backward bytes per item and per step of each tower of ``name`` at ``precision``."""
    if precision == "fp16":
        raise ValueError("measure bf16: fp16 autocast saves tensors of the same sizes")
    config = backbone_config(name)
    gen = torch.Generator().manual_seed(0)
    built: dict[str, nn.Module] = {}
    out: dict[str, Any] = {}
    for tower in ("text", "vision", "audio"):
        layers = (config.transformer_layers if tower == "text" else config.vision_layers)
        row: dict[str, Any] = {"layers": layers}
        for ckpt in (False, True):
            measured = {}
            for n in (1, 2):
                module, run, inputs = _tower_runs(config, tower, n, gen, built)
                module.set_grad_checkpointing(ckpt)
                measured[n] = _saved_bytes(module, run, inputs, precision)
            per_item = measured[2][0] - measured[1][0]
            key = "ckpt" if ckpt else "full"
            row[f"{key}_per_item"] = per_item
            row[f"{key}_per_step"] = measured[1][0] - per_item
            if not ckpt:
                row["block_per_item"] = (measured[2][1] - measured[1][1]) // layers
        module, run, _ = _tower_runs(config, tower, 1, gen, built)
        module.set_grad_checkpointing(False)
        with _autocast(precision):
            row["frozen_largest_per_item"] = _largest_intermediate(module, run)
        log(f"  {name} {precision} {tower}: {row['full_per_item'] / 2**20:.1f} MiB/item saved "
            f"({row['ckpt_per_item'] / 2**20:.2f} with checkpointing), +{row['full_per_step'] / 2**20:.1f} MiB/step")
        out[tower] = row
    return out


def _autocast(precision: str):
    from clip4vla.precision import autocast

    return autocast(torch.device("cpu"), precision)


def measure_step(name: str, precision: str, batch: int, checkpointing: bool) -> int:
    """Saved bytes of a whole pre-training step's towers at ``batch`` (all trained), then its backward.

    The check of the per-tower composition: text ``[B, 32]``, ``B x 12`` frames, ``B x 10``
    segments and their masked copy, encoded as ``PretrainForward`` does.
    """
    from clip4vla.train.pretrain import PretrainForward

    config = backbone_config(name)
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(config, audio_init="vision", use_type_token=True)
    model.set_grad_checkpointing(checkpointing)
    forward = PretrainForward(model)
    gen = torch.Generator().manual_seed(1)
    side, segs = config.image_resolution, SAMPLE["audio_segments"] // 2
    text = torch.randint(1, 49406, (batch, SAMPLE["words"]), generator=gen)
    text[:, -1] = 49407
    inputs = {
        "text": text,
        "frames": torch.randn(batch, SAMPLE["frames"], 3, side, side, generator=gen),
        "frame_mask": torch.ones(batch, SAMPLE["frames"], dtype=torch.bool),
        "audio": torch.randn(batch, segs, 3, AUDIO_SIDE, AUDIO_SIDE, generator=gen),
        "audio_mask": torch.ones(batch, segs, dtype=torch.bool),
        "audio_type": torch.zeros(batch, dtype=torch.long),
        "masked_audio": torch.randn(batch, segs, 3, AUDIO_SIDE, AUDIO_SIDE, generator=gen),
    }
    meter = SavedTensorMeter(model, [inputs[k] for k in ("text", "frames", "audio", "masked_audio")])
    try:
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t), _autocast(precision):
            features = {**forward.clip_features(**inputs), **forward.trainable_features(**inputs)}
    finally:
        meter.close()
    sum(f.float().sum() for f in features.values()).backward()
    model.set_grad_checkpointing(False)
    return meter.total


# ------------------------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """GiB per rank of one configuration at ``batch`` samples per rank."""

    backbone: str
    gpu: str
    strategy: str
    ranks: int
    precision: str
    checkpointing: bool
    train_clip: bool
    batch: int
    params: ParameterCounts
    weights: float
    grads: float
    optimizer: float
    comm: float  # DDP buckets or FSDP's unsharded units in flight
    activations: float
    overhead: float
    usable: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.comm + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.usable


def _activation_gib(acts: dict[str, Any], batch: int, train_clip: bool, checkpointing: bool,
                    image_side: int) -> float:
    """Activation and input memory of one step at ``batch`` samples (see the module docstring)."""
    key = "ckpt" if checkpointing else "full"
    items = {"text": SAMPLE["captions"], "vision": SAMPLE["frames"], "audio": SAMPLE["audio_segments"]}
    trained = ("text", "vision", "audio") if train_clip else ("audio",)
    # per step: autocast's half-precision weight copies, cached for the whole forward (also when the
    # checkpointed blocks do not save them), so the larger of the two measurements
    saved = sum(acts[t][f"{key}_per_item"] * items[t] * batch + max(acts[t]["full_per_step"], acts[t]["ckpt_per_step"])
                for t in trained)
    # backward works through one block at a time: its recomputed (or gradient) tensors
    block = max(acts[t]["block_per_item"] * items[t] * batch for t in trained)
    frozen = max((3 * acts[t]["frozen_largest_per_item"] * items[t] * batch
                  for t in ("text", "vision") if not train_clip), default=0)
    pixels = 4 * 3 * batch * (SAMPLE["frames"] * image_side**2 + SAMPLE["audio_segments"] * AUDIO_SIDE**2)
    tokens = 8 * batch * SAMPLE["words"]
    return (max(saved + block, frozen) + pixels + tokens) / GIB


def load_measurements(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def plan(backbone: str, gpu: str, measurements: dict[str, Any], strategy: str = "ddp", ranks: int = 8,
         batch: int = 16, precision: str = "bf16", checkpointing: bool = False, train_clip: bool = True) -> MemoryPlan:
    """The per-rank breakdown of one configuration (``measurements``: the cached JSON)."""
    usable = usable_gib(gpu)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if ranks < 1 or batch < 0:
        raise ValueError(f"ranks must be >= 1 and batch >= 0, got {ranks} and {batch}")
    backbone_config(backbone)
    per_precision = measurements.get("backbones", {}).get(backbone, {})
    measured_as = "bf16" if precision == "fp16" else precision  # same tensor sizes
    if measured_as not in per_precision:
        raise ValueError(f"no activation measurement of {backbone} at {measured_as}; run plan_memory.py --measure")
    params = ParameterCounts(**measurements["parameters"][backbone])
    trained = params.trained(train_clip)
    frozen = params.total - trained
    # FSDP shards the trained towers' blocks; their embeddings, norms and projections and any frozen
    # tower stay whole on every rank (clip4vla/train/fsdp.py). Without a second rank nothing shards.
    sharded = params.sharded(train_clip) if strategy == "fsdp" and ranks > 1 else 0
    per_rank = trained - sharded + sharded / ranks
    weights = (4 * frozen + 4 * per_rank) / GIB
    grads = 4 * per_rank / GIB
    optimizer = 8 * per_rank / GIB
    if not sharded:
        comm = 4 * trained / GIB if ranks > 1 else 0.0  # DDP's gradient buckets (no DDP on one rank)
    else:
        # a block's gathered parameters and unsharded gradients (+ the fp32 reduce-scatter input
        # under bf16), for the running block and the prefetched next one: 8 B per parameter, twice
        comm = 2 * 8 * params.largest_block / GIB
    acts = _activation_gib(per_precision[measured_as], batch, train_clip, checkpointing,
                           backbone_config(backbone).image_resolution)
    return MemoryPlan(backbone, gpu, strategy, ranks, precision, checkpointing, train_clip, batch, params,
                      weights, grads, optimizer, comm, acts, CUDA_OVERHEAD_GIB, usable)


def largest_batch(backbone: str, gpu: str, measurements: dict[str, Any], **options: Any) -> int:
    """The largest per-rank batch whose plan fits (0: not even one sample)."""
    options.pop("batch", None)
    if not plan(backbone, gpu, measurements, batch=1, **options).fits:
        return 0
    lo, hi = 1, 2
    while plan(backbone, gpu, measurements, batch=hi, **options).fits:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plan(backbone, gpu, measurements, batch=mid, **options).fits:
            lo = mid
        else:
            hi = mid
    return lo


def parameters_record(name: str) -> dict[str, int]:
    return dataclasses.asdict(count_parameters(name))


def describe(p: MemoryPlan) -> str:
    rows = [("weights (fp32)", p.weights), ("gradients (fp32)", p.grads), ("AdamW moments (fp32)", p.optimizer),
            ("DDP gradient buckets" if p.strategy == "ddp" else "FSDP unsharded units in flight", p.comm),
            (f"activations + inputs ({p.precision}, batch {p.batch})", p.activations),
            ("CUDA context / workspaces (assumed)", p.overhead)]
    width = max(len(r[0]) for r in rows)
    lines = [f"  {label:<{width}}  {gib:7.2f} GiB" for label, gib in rows]
    lines.append(f"  {'total':<{width}}  {p.total:7.2f} GiB of {p.usable:.2f} usable -> "
                 f"{'fits' if p.fits else 'does NOT fit'}")
    return "\n".join(lines)
