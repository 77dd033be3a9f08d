"""Which weights a run keeps: the validation metric, its direction, and the best weights so far.

The task declares its validation metrics with the direction each improves in
(``Task.validation_metrics``: recalls up, ranks down); ``train.select_metric`` may pick another of
them. The choice is checked when the run starts, not at the first validation an hour later, and
the direction comes from the declaration, never from the metric's name.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from clip4vla.config import ConfigError, RunConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.train.run_folder import RunFolder
from clip4vla.train.task import Task

__all__ = ["BestWeights", "selection"]

log = logging.getLogger(__name__)


def selection(config: RunConfig, task: Task) -> tuple[str, str]:
    """``(metric, "max" | "min")`` that chooses ``best.pt``; an unknown metric is a config error."""
    metric = config.train.select_metric or task.select_metric
    if config.data.val_split is not None and metric not in task.validation_metrics:
        raise ConfigError(f"train.select_metric={metric!r} is not a validation metric of {task.name}; "
                          f"choose one of {sorted(task.validation_metrics)}")
    return metric, task.validation_metrics.get(metric, "max")


class BestWeights:
    """The best validation so far (``{"step", "metric", "value"}``, kept in every checkpoint) and
    its weights in ``best.pt``."""

    def __init__(self, folder: RunFolder, metric: str, mode: str) -> None:
        self.folder, self.metric, self.mode = folder, metric, mode
        self.best: dict[str, Any] | None = None

    def offer(self, step: int, metrics: dict[str, float], state: Callable[[], dict[str, Any]]) -> bool:
        """Keep ``state()`` (built only when needed) as ``best.pt`` if ``metrics`` beat the best."""
        value = float(metrics[self.metric])
        best = None if self.best is None else self.best["value"]
        if best is not None and not (value < best if self.mode == "min" else value > best):
            return False
        self.best = {"step": step, "metric": self.metric, "value": value}
        self.folder.save_best({**state(), "step": step, "best": self.best})
        return True

    def load_into(self, model: CLIP4VLA, validated: bool) -> None:
        """Give ``model`` the best validation weights (the main rank's test and export)."""
        if self.best is None:
            if validated:
                log.warning("train.export=best but no validation ran; exporting the last weights")
            return
        model.load_state_dict(self.folder.load_best()["model"])
        log.info("loaded the best validation weights (%s %.4g at step %d) from %s",
                 self.best["metric"], self.best["value"], self.best["step"], self.folder.best_path)
