"""TensorBoard event files beside ``metrics.jsonl`` (``train.tensorboard: true``).

``metrics.jsonl`` stays the source of truth: every row the loop logs there (losses, learning rate,
throughput, skipped samples, every validation metric) is written here too, one scalar per numeric
key at the row's step, so the dashboard shows the same numbers. ``tensorboard`` is an optional
extra (``pip install -e ".[tensorboard]"``), imported only when a run asks for it; a run that asks
without it installed stops at start-up, before any data or model work.

A resumed run cuts its log back to the checkpoint (rows written after it are recomputed). The
writer opened for it starts with TensorBoard's purge marker at step 0, so the reader drops every
event of the killed run (including those it had logged past the checkpoint, and missing those it
never flushed), and then writes the restored log again: the dashboard agrees with
``metrics.jsonl`` whatever happened to the old event file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from clip4vla.config import ConfigError

__all__ = ["TENSORBOARD_DIR", "TensorBoardLog", "require_tensorboard", "scalars"]

# <train.output_dir>/<this>: the folder to point `tensorboard --logdir` at (or at a parent of many runs)
TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    """A :class:`ConfigError` naming the install command when the package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"train.tensorboard=true needs the tensorboard package ({err}): pip install -e \".[tensorboard]\", "
            "or set train.tensorboard=false (metrics.jsonl is written either way)"
        ) from None


def scalars(row: dict[str, Any]) -> Iterable[tuple[str, float]]:
    """The (tag, value) pairs of one metrics row: every finite number but the step itself."""
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            yield key, float(value)


class TensorBoardLog:
    """One run's event writer: earlier writers' events are dropped, ``history`` is written first."""

    def __init__(self, run_dir: str | Path, history: Iterable[dict[str, Any]] = ()) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.directory = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(log_dir=str(self.directory), purge_step=0, flush_secs=30)
        for row in history:
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        for tag, value in scalars(row):
            self._writer.add_scalar(tag, value, global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
