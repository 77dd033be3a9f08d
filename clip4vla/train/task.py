"""What a kind of training run supplies to the one training loop (``clip4vla.train.loop``).

The loop owns everything every run needs (DDP, precision, accumulation, clipping, schedule,
checkpoints, resume, validation cadence, best-checkpoint selection, logs, the model file). A
:class:`Task` owns what differs: its datasets, the module DDP wraps (saying which features
come from CLIP's towers, so that frozen towers run once without autograd), the loss and the
modules it trains, the evaluation and the metric to select on. Pre-training
(:mod:`clip4vla.train.pretrain`) is one task; fine-tuning tasks are others.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from clip4vla.config import RunConfig
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.data.splits import DataSplits, ensure_synthetic, split_datasets
from clip4vla.evaluation.retrieval import RANK_METRICS
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.train.distributed import DistInfo, barrier

Features = dict[str, torch.Tensor]
Batch = dict[str, Any]


class TaskForward(nn.Module):
    """Batch tensors -> features for the loss: the module DDP wraps.

    A task splits its features in two. :meth:`clip_features` come from CLIP's text and vision
    towers alone; :meth:`trainable_features` are the rest (the audio encoder, task heads). Whether
    the towers train is the model's own state (``model.clip_frozen``, set once from
    ``model.train_clip``): frozen, the stepper computes ``clip_features`` once per micro-batch
    without autograd, outside DDP and outside the re-encoding pass of feature-cached accumulation,
    and :meth:`forward` leaves them out; trained, :meth:`forward` computes both.
    """

    def __init__(self, model: CLIP4VLA) -> None:
        super().__init__()
        self.model = model

    def clip_features(self, **inputs: torch.Tensor) -> Features:
        return {}

    def trainable_features(self, **inputs: torch.Tensor) -> Features:
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> Features:
        out = {} if self.model.clip_frozen else self.clip_features(**inputs)
        out.update(self.trainable_features(**inputs))
        return out


class Task:
    """Base class: override the methods below (see :class:`clip4vla.train.pretrain.PretrainTask`).

    The loop calls, in order: :meth:`datasets`, then (with the model built) :meth:`setup`, then per
    optimiser step :meth:`inputs`, ``forward_module`` (a :class:`TaskForward`) and :meth:`loss`;
    for validation and test :meth:`evaluate`.
    """

    name = "task"
    # The validation metric best.pt is chosen on (a key of evaluate()'s "metrics"), and whether
    # the exported model is the last step's or the best validation's.
    select_metric = ""
    export = "best"
    # Every key of evaluate()'s "metrics" on the validation split with whether higher ("max") or
    # lower ("min") is better: train.select_metric is checked against them at start-up (not at
    # the first validation), and best.pt is chosen in that direction.
    validation_metrics: dict[str, str] = {}
    # the validation metrics the progress line prints (and the selection metric)
    shown_metrics: tuple[str, ...] = ()
    # The heads (model.heads names) this task trains; any other head of init_from is dropped.
    trained_heads: tuple[str, ...] = ()
    # True: the loss couples the samples of the batch (contrastive), so accumulation caches
    # features and re-encodes (every accumulated sample is a negative). False: micro-batch losses
    # are independent and accumulate as plain gradient sums.
    batch_coupled = True
    # training-loss keys worth plotting
    loss_keys: tuple[str, ...] = ("loss",)
    # fine-tuning starts from a pre-trained model (model.init_from), never from random towers
    requires_init = False
    # How records become tensors (set in __init__; the loop sets options.inputs.image_size to the
    # resolution of the model the run starts from before any data is read).
    options: SampleOptions

    def __init__(self, config: RunConfig, dist: DistInfo) -> None:
        self.config = config
        self.dist = dist
        self.device = dist.device
        self.forward_module: TaskForward | None = None
        self.loss_module: nn.Module = nn.Module()  # trained outside DDP (gradients all-reduced)

    # -- data ----------------------------------------------------------------------------------

    def datasets(self) -> DataSplits:
        raise NotImplementedError

    def preprocessing(self) -> Preprocessing:
        """What the exported model records about its inputs."""
        raise NotImplementedError

    # -- model ---------------------------------------------------------------------------------

    def setup(self, model: CLIP4VLA) -> None:
        """Add task heads to ``model`` and build ``forward_module`` (a :class:`TaskForward`) and ``loss_module``."""
        raise NotImplementedError

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The tensors of a collated batch that the step needs, on the run's device."""
        raise NotImplementedError

    def loss(self, features: Features, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss over the features of ``batches`` (the micro-batches of one step, concatenated)."""
        raise NotImplementedError

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, model: CLIP4VLA, dataset: TriModalDataset, split: str) -> dict[str, Any]:
        """``{"metrics": {flat name: float}, ...}`` on one split (called on the main rank only)."""
        raise NotImplementedError

    def report(self, result: dict[str, Any]) -> str:
        """The table the script prints for a test result."""
        raise NotImplementedError

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        """The JSON object the script prints last."""
        return {"split": result.get("split"), **result.get("metrics", {})}


def task_datasets(config: RunConfig, dist: DistInfo, purpose: str, options: SampleOptions, eval_options: SampleOptions,
                  unfold_train: bool = False) -> DataSplits:
    """A task's splits (``clip4vla.data.splits``); the synthetic corpus is generated by the main
    rank while the others wait."""
    if dist.is_main:
        ensure_synthetic(config.data)
    barrier()
    return split_datasets(config, purpose, options, eval_options, unfold_train)


def rank_metric_modes(*directions: str) -> dict[str, str]:
    """``{"t2v/R1": "max", ..., "t2v/MedR": "min", ...}``: recalls improve upwards, ranks downwards."""
    return {f"{d}/{k}": "min" if k in ("MedR", "MeanR") else "max" for d in directions for k in RANK_METRICS}
