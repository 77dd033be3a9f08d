"""Retrieval fine-tuning as a task of the one loop: text <-> (video + audio) with a fusion head.

The fusion head (``clip4vla.models.fusion``: G2G, G2L, L2L) is added to the model (or taken from
``model.init_from`` when that file has one of the same mode). What DDP wraps
(:class:`RetrievalForward`) encodes text, frames and segments and, for G2G/G2L, pools the video
side; the loss (``clip4vla.losses.RetrievalLoss``) scores local rows against the gathered batch.
L2L scores (text, video) *pairs*, so its transformer runs in the loss, on gathered features,
outside DDP. Checkpoints are chosen on the validation split (``t2v/R1`` by default), never on test.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from clip4vla.config import RetrievalConfig
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.evaluation.fusion_retrieval import (
    encode_retrieval_set,
    evaluate_fusion_retrieval,
    format_retrieval_table,
    retrieval_summary,
)
from clip4vla.losses import RetrievalLoss
from clip4vla.models.audio import resolve_audio_type
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.fusion import FusionHead, has_modality
from clip4vla.models.heads import attach_fusion_head
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.train.distributed import DistInfo
from clip4vla.train.task import Batch, DataSplits, Features, Task, TaskForward, rank_metric_modes, task_datasets

__all__ = ["RetrievalForward", "RetrievalTask"]

log = logging.getLogger(__name__)


def _prefixed(prefix: str, side: dict[str, torch.Tensor]) -> Features:
    return {f"{prefix}{k}": v for k, v in side.items()}


def _side(features: Features, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: (v.float() if v.is_floating_point() else v)
            for k, v in features.items() if k.startswith(prefix)}


class RetrievalForward(TaskForward):
    """Text side (CLIP's text tower) and video side (frames, segments, fusion head) of a batch."""

    def __init__(self, model: CLIP4VLA, head: FusionHead, modality: str, audio_type: Any) -> None:
        super().__init__(model)
        self.head = head
        self.modality = modality
        self.audio_type = audio_type

    def clip_features(self, text: torch.Tensor, **_: torch.Tensor) -> Features:
        return _prefixed("text.", self.model.fusion_text(text))  # text: [B, max_words]

    def trainable_features(
        self,
        frames: torch.Tensor,  # [B, F, 3, H, W]
        frame_mask: torch.Tensor,  # [B, F]
        audio: torch.Tensor,  # [B, L, 3, 224, 224]
        audio_mask: torch.Tensor,  # [B, L]
        audio_type: torch.Tensor,  # [B]
        **_: torch.Tensor,
    ) -> Features:
        frame_features, segment_features = self.model.encode_media(
            frames, frame_mask, audio, audio_mask, resolve_audio_type(self.audio_type, audio_type), self.modality,
        )
        return _prefixed("video.", self.head.video_side(frame_features, frame_mask, segment_features, audio_mask,
                                                        self.modality))


class RetrievalTask(Task):
    """Fine-tuning text -> video retrieval with vision and audio (paper §3.3)."""

    name = "retrieval"
    select_metric = "t2v/R1"
    validation_metrics = rank_metric_modes("t2v", "v2t")
    shown_metrics = ("t2v/R1", "v2t/R1")
    trained_heads = ("fusion",)
    export = "best"
    loss_keys = ("loss", "t2v", "v2t")
    requires_init = True

    def __init__(self, config: RetrievalConfig, dist: DistInfo) -> None:
        super().__init__(config, dist)
        rc = config.retrieval
        self.options = SampleOptions.from_config(config.data, config.audio, masked_audio=False,
                                                 random_caption=rc.epoch == "videos")
        self.video_numbers: dict[str, int] = {}
        self.model: CLIP4VLA | None = None

    def datasets(self) -> DataSplits:
        data = task_datasets(self.config, self.dist, "retrieval", self.options, self.options.evaluation(),
                              unfold_train=self.config.retrieval.epoch == "captions")
        records = data.train.records  # a manifest lists its ids without building a record per row
        ids = records.video_ids() if hasattr(records, "video_ids") else (r.video_id for r in records)
        self.video_numbers = {vid: i for i, vid in enumerate(dict.fromkeys(ids))}
        log.info("retrieval: an epoch visits every %s once (retrieval.epoch=%s): %d training rows, %d videos",
                 "caption" if self.config.retrieval.epoch == "captions" else "video (one random caption)",
                 self.config.retrieval.epoch, len(data.train), len(self.video_numbers))
        return data

    def preprocessing(self) -> Preprocessing:
        audio_type = self.config.retrieval.audio_type
        return self.options.preprocessing(audio_type=None if audio_type == "clip" else audio_type)

    def setup(self, model: CLIP4VLA) -> None:
        rc = self.config.retrieval
        self.model = model
        head = attach_fusion_head(model, rc.fusion, rc.fusion_layers)
        self.loss_module = RetrievalLoss(head, direction=rc.loss, learnable_scale=rc.learnable_scale,
                                         init_scale=rc.init_scale, train_head=rc.fusion == "l2l").to(self.device)
        self.forward_module = RetrievalForward(model, head, rc.modality, rc.audio_type)

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        keys = ("text", "frames", "frame_mask", "audio", "audio_mask", "audio_type")
        return {k: batch[k].to(self.device, non_blocking=True) for k in keys}

    def _usable(self, batch: Batch) -> torch.Tensor:
        return batch["valid"] & has_modality(batch["frame_mask"], batch["audio_mask"], self.config.retrieval.modality)

    def loss(self, features: Features, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        valid = torch.cat([self._usable(b) for b in batches]).to(self.device)
        index = torch.tensor([self.video_numbers.get(v, -1) for b in batches for v in b["video_id"]], device=self.device)
        return self.loss_module(_side(features, "text."), _side(features, "video."), valid, index)

    def evaluate(self, model: CLIP4VLA, dataset: TriModalDataset, split: str) -> dict[str, Any]:
        rc = self.config.retrieval
        batch = self.config.train.batch_size // self.dist.world_size
        encoded = encode_retrieval_set(model, dataset, batch, self.device, self.config.train.precision, rc.audio_type)
        modalities = [rc.modality] if split == "val" else list(rc.test_modalities)
        scale = float(self.loss_module.logit_scale().detach())
        result = evaluate_fusion_retrieval(model, encoded, modalities, scale, self.device,
                                           self.config.train.precision, batch)
        flat = {}
        for modality, m in result["modalities"].items():
            prefix = "" if split == "val" else f"{modality}/"
            flat.update({f"{prefix}{d}/{k}": v for d in ("t2v", "v2t") for k, v in m[d].items()})
        return {**result, "split": split, "fusion": rc.fusion, "metrics": flat}

    def report(self, result: dict[str, Any]) -> str:
        return format_retrieval_table(result)

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        return retrieval_summary(result)
