"""TensorBoard event files from ``metrics.jsonl``: live beside it (``train.tensorboard: true``),
or written afterwards from a finished run's log (:func:`write_events`; the ablation's dashboard).

``metrics.jsonl`` stays the source of truth: every row the loop logs there (losses, learning rate,
throughput, skipped samples, every validation and test metric) is written here too, one scalar per
numeric key at the row's step, so the dashboard shows the same numbers. The tags spell the log's
short keys out and group them by split (:func:`clip4vla.plotting.metric_tag`: ``ta`` ->
``train/text_audio_nce``, ``val/t2a/R1`` -> ``val/text_to_audio_R1``). ``tensorboard`` is an
optional extra (``pip install -e ".[tensorboard]"``), imported only when a run asks for it; a run
that asks without it installed, or whose event folder cannot be written, stops at start-up, before
any data or model work and before any folder is made.

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
from clip4vla.files import nearest_existing, probe_writable
from clip4vla.plotting import metric_tag

__all__ = ["TENSORBOARD_DIR", "EventFolderError", "TensorBoardLog", "check_event_folder", "has_tensorboard",
           "require_tensorboard", "scalars", "write_events"]

# <train.output_dir>/<this>: the folder to point `tensorboard --logdir` at (or at a parent of many runs)
TENSORBOARD_DIR = "tensorboard"


def has_tensorboard() -> bool:
    try:
        require_tensorboard()
    except ConfigError:
        return False
    return True


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


class EventFolderError(ValueError):
    """The folder for the event files cannot be made or written (one line for the user)."""


def check_event_folder(directory: Path, instead: str = "set train.tensorboard=false") -> None:
    """At start-up, before any writer thread starts and before anything is made: the event folder
    is a folder (or can be made) and takes files. A writer started on an unusable one fails in
    its own thread, with a traceback the run cannot catch. ``instead``: the other way out."""
    directory = Path(directory)
    existing = nearest_existing(directory)
    if not existing.is_dir():
        raise EventFolderError(f"{existing} is a file, not a folder for TensorBoard's event files "
                               f"({directory}): move it away, or {instead}")
    try:
        probe_writable(existing)
    except OSError as err:
        raise EventFolderError(f"{existing} is not writable, so TensorBoard's event files cannot go into "
                               f"{directory} ({err.strerror or err}): make it writable, or {instead}") from None


def scalars(row: dict[str, Any]) -> Iterable[tuple[str, float]]:
    """The (tag, value) pairs of one metrics row: every finite number but the step itself."""
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            yield metric_tag(key), float(value)


def _add_row(writer: Any, row: dict[str, Any]) -> None:
    step = int(row.get("step", 0))
    for tag, value in scalars(row):
        writer.add_scalar(tag, value, global_step=step)


def write_events(directory: str | Path, rows: Iterable[dict[str, Any]], instead: str = "set train.tensorboard=false"
                 ) -> Path:
    """A finished run's events from its log rows, into ``directory`` (a folder of its own: the
    event files written there before are replaced, so writing again never doubles a step)."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    directory = Path(directory)
    check_event_folder(directory, instead)
    for old in directory.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(directory))
    try:
        for row in rows:
            _add_row(writer, row)
    finally:
        writer.close()
    return directory


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
        _add_row(self._writer, row)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
