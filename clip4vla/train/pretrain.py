"""Pre-training as a task of the one loop: tri-modal NCE on global features (paper Eq. 5).

Text and vision towers are frozen by default (paper): their features
(:meth:`PretrainForward.clip_features`) are then computed once per micro-batch without autograd,
outside DDP and outside the re-encoding pass of feature-cached accumulation. The audio encoder
(and, with ``model.train_clip``, the CLIP towers) is what DDP wraps.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from clip4vla.config import PretrainConfig
from clip4vla.data.dataset import SampleOptions, TriModalDataset, usable_rows
from clip4vla.evaluation.zero_shot import TASKS as ZERO_SHOT_TASKS, zero_shot_retrieval
from clip4vla.losses import PretrainLoss
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.train.distributed import DistInfo
from clip4vla.train.task import Batch, DataSplits, Features, Task, TaskForward, rank_metric_modes, task_datasets

__all__ = ["PretrainForward", "PretrainTask"]


class PretrainForward(TaskForward):
    """Global features: text and video from CLIP's towers, audio (and its masked copy) from the audio encoder."""

    def clip_features(self, text: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor,
                      **_: torch.Tensor) -> Features:
        return {"text": self.model.encode_text(text), "video": self.model.encode_video(frames, frame_mask)[1]}

    def trainable_features(
        self,
        audio: torch.Tensor,  # [B, L, 3, 224, 224]
        audio_mask: torch.Tensor,  # [B, L]
        audio_type: torch.Tensor,  # [B]
        masked_audio: torch.Tensor | None = None,
        **_: torch.Tensor,
    ) -> Features:
        # Two calls rather than one on torch.cat([audio, masked_audio]): that copy of the pixel
        # batch cost more than the second call's overhead (measured on CPU with the tiny model).
        out = {"audio": self.model.encode_audio(audio, audio_mask, audio_type)[1]}
        if masked_audio is not None:
            out["masked_audio"] = self.model.encode_audio(masked_audio, audio_mask, audio_type)[1]
        return out


class PretrainTask(Task):
    """Inter-modal (text-audio, video-audio) and intra-modal (audio-masked audio) NCE."""

    name = "pretrain"
    # mean of the zero-shot text->audio and video->audio R@1: what pre-training trains
    select_metric = "audio_R1"
    validation_metrics = {**rank_metric_modes(*ZERO_SHOT_TASKS), "audio_R1": "max"}
    shown_metrics = ("t2a/R1", "v2a/R1", "t2v/R1", "audio_R1")
    # the pre-trained model is the last step's (validation only monitors; nothing is fine-tuned on it)
    export = "last"
    loss_keys = ("loss", "ta", "va", "aa", "tv", "tt", "vv")

    def __init__(self, config: PretrainConfig, dist: DistInfo) -> None:
        super().__init__(config, dist)
        self.options = SampleOptions.from_config(
            config.data, config.audio, masked_audio=config.pretrain.intra_modal, random_caption=True
        )
        self.model: CLIP4VLA | None = None

    def datasets(self) -> DataSplits:
        return task_datasets(self.config, self.dist, "pretrain", self.options, self.options.evaluation())

    def preprocessing(self) -> Preprocessing:
        return self.options.preprocessing(audio_type=None)  # pre-training uses each clip's own type

    def setup(self, model: CLIP4VLA) -> None:
        pc = self.config.pretrain
        self.model = model
        self.loss_module = PretrainLoss(
            intra_modal=pc.intra_modal,
            learnable_scale=pc.learnable_scale,
            init_scale=pc.init_scale,
            ref_extras=pc.ref_extras,
            text_video=pc.text_video,
            video_audio=pc.video_audio,
        ).to(self.device)
        self.forward_module = PretrainForward(model)

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        keys = ["text", "frames", "frame_mask", "audio", "audio_mask", "audio_type"]
        if self.config.pretrain.intra_modal:
            keys.append("masked_audio")
        return {k: batch[k].to(self.device, non_blocking=True) for k in keys}

    def loss(self, features: Features, batches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        valid = torch.cat([usable_rows(b) for b in batches]).to(self.device)
        has_text = torch.cat([b["has_text"] for b in batches]).to(self.device)  # False: media-only clips
        features = {k: v.float() for k, v in features.items()}
        return self.loss_module(
            features["text"], features["video"], features["audio"], features.get("masked_audio"), valid=valid,
            has_text=has_text,
        )

    def evaluate(self, model: CLIP4VLA, dataset: TriModalDataset, split: str) -> dict[str, Any]:
        """Zero-shot text->audio, video->audio and text->video retrieval."""
        result = zero_shot_retrieval(
            model, dataset, batch_size=self.config.train.batch_size // self.dist.world_size,
            device=self.device, precision=self.config.train.precision,
        )
        metrics = {f"{task}/{k}": v for task, m in result["retrieval"].items() for k, v in m.items()}
        metrics["audio_R1"] = 0.5 * (metrics["t2a/R1"] + metrics["v2a/R1"])
        return {**result, "split": split, "metrics": metrics}

    def report(self, result: dict[str, Any]) -> str:
        chance = result["chance"]
        lines = [
            f"zero-shot retrieval on the {result['split']} split ({result['n_clips']} clips with audio and video):",
            f"  {'task':<6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MedR':>8}",
        ]
        for task, m in result["retrieval"].items():
            lines.append(f"  {task:<6}{m['R1']:8.1f}{m['R5']:8.1f}{m['R10']:8.1f}{m['MedR']:8.1f}")
        lines.append(f"  {'chance':<6}{chance['R1']:8.1f}{chance['R5']:8.1f}{chance['R10']:8.1f}{chance['MedR']:8.1f}")
        return "\n".join(lines)

    def summary(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"split": result["split"], "n_clips": result["n_clips"], **result["retrieval"], "chance": result["chance"]}
