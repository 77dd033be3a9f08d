"""A run's output folder: what is in it, who may write it, and the files the loop keeps there.

``<train.output_dir>/``: ``config.yaml`` (what the run uses), ``metrics.jsonl`` (one row per
logged step, validation and resume; rewritten from the checkpointed history on resume, so it
always agrees with the checkpoint), ``checkpoints/ckpt_<step>.pt`` (the newest ``keep_last``; a
folder ``ckpt_<step>/`` of per-rank shards for FSDP runs, :mod:`clip4vla.train.sharded_checkpoint`),
``checkpoints/best.pt`` (the best validation's weights), ``model/`` (the model folder: weights,
``config.json`` and the model card, :mod:`clip4vla.models.model_folder`) and, while a run is alive,
``.run.lock``. Runs of clip4vla 0.2 left ``model.pt`` instead; it stays readable.

Two runs started at once in one ``train.output_dir`` would interleave checkpoints and logs and
leave a folder holding whichever wrote last, with both exiting 0. The first run creates
``<output_dir>/.run.lock`` (``O_CREAT | O_EXCL``, atomic on local and NFS file systems) holding
its host and process id and removes it when it ends; a second run finds the lock and stops with
a message naming the holder. A lock whose process is gone (kill -9, an out-of-memory kill) is
taken over with a warning when the holder ran on this host; from another host we cannot tell
whether it still runs, so the message says how to remove the lock by hand.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

import torch

from clip4vla.config import ConfigError, RunConfig, config_to_dict, save_config
from clip4vla.files import save_checkpoint, write_text_atomic
from clip4vla.models.card import CardFacts
from clip4vla.models.checkpoints import export_model
from clip4vla.models.model_folder import is_model_folder
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.loading import CheckpointError
from clip4vla.train.checkpoint import CheckpointManager, CheckpointWriteError, describe_write_failure, load_checkpoint
from clip4vla.train.distributed import DistInfo, all_reduce_mean, barrier, broadcast_object, is_distributed
from clip4vla.train.resume import check_resume_config

__all__ = ["BEST_NAME", "LEGACY_MODEL_NAME", "LOCK_NAME", "MODEL_NAME", "ExportError", "RunFolder", "RunFolderInUse", "RunFolderLocked",
           "RunLock", "claim_run_folder"]

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
BEST_NAME = "best.pt"
MODEL_NAME = "model"  # the model folder a finished run leaves
LEGACY_MODEL_NAME = "model.pt"  # what runs of clip4vla 0.2 left instead
# A lock file that cannot be parsed may be one another run is writing this very moment.
_UNREADABLE_GRACE_S = 10.0
# Locks this process holds: a lock naming our own pid that is not here was left by an earlier
# run of this process (a trainer that was never closed) and is stale.
_HELD: set[str] = set()


class RunFolderLocked(ValueError):
    """Another run holds the output folder."""


class RunFolderInUse(ConfigError):
    """A fresh run would write over another run's checkpoints."""


class ExportError(CheckpointWriteError):
    """The model folder could not be written after the test ran; ``result`` holds the test's metrics."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """The lock file of one output folder, held by this process until :meth:`release`."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.held = False

    def _record(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(self._record())
        return True

    def _stale_reason(self) -> str | None:
        """Why the existing lock may be taken over, or None when its run may still be alive."""
        try:
            holder = json.loads(self.path.read_text())
            host, pid = str(holder["host"]), int(holder["pid"])
        except FileNotFoundError:
            return "released meanwhile"
        except (OSError, ValueError, KeyError, TypeError):
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else _UNREADABLE_GRACE_S
            return "unreadable, written by a run that was killed" if age >= _UNREADABLE_GRACE_S else None
        if host != self.host:
            return None
        if pid == self.pid:
            return None if str(self.path) in _HELD else "left by an earlier run of this process"
        return None if _alive(pid) else f"its process {pid} is gone"

    def holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            return f"process {holder['pid']} on {holder['host']} (since {holder.get('started', '?')})"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunFolderLocked` naming the run that holds it."""
        if self._create():
            self.held = True
        else:
            reason = self._stale_reason()
            if reason is None:
                raise RunFolderLocked(
                    f"{self.path.parent} is in use by another run ({self.holder()}): wait for it to end, or choose "
                    f"another train.output_dir. If that run is dead (e.g. its node crashed), delete {self.path}"
                )
            if reason != "left by an earlier run of this process":
                log.warning("%s: taking over a stale lock (%s)", self.path, reason)
            tmp = self.path.with_name(f"{LOCK_NAME}.{self.host}.{self.pid}")
            tmp.write_text(self._record())
            os.replace(tmp, self.path)
            self.held = True
        _HELD.add(str(self.path))

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        if not self.held:
            return
        self.held = False
        _HELD.discard(str(self.path))
        try:
            holder = json.loads(self.path.read_text())
            if holder.get("host") == self.host and holder.get("pid") == self.pid:
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def claim_run_folder(directory: Path, dist: DistInfo) -> RunLock:
    """The main rank takes the folder's lock; every rank raises the same error when it cannot."""
    lock = RunLock(directory)
    error = None
    if dist.is_main:
        try:
            lock.acquire()
        except RunFolderLocked as err:
            error = str(err)
    if is_distributed():
        error = broadcast_object(error)
    if error is not None:
        raise RunFolderLocked(error)
    return lock


def _checked_on_main(dist: DistInfo, check: Callable[[], None]) -> None:
    """``check()`` on the main rank (which writes the files); every rank raises its error."""
    error = None
    if dist.is_main:
        try:
            check()
        except ValueError as err:
            error = err
    if is_distributed():
        error = broadcast_object(error)
    if error is not None:
        raise error


class RunFolder:
    """The output folder of one run: claimed at start, written by the main rank, released at the end.

    Every rank holds one (they agree on what is there); only the main rank writes files.
    """

    def __init__(self, directory: str | os.PathLike, dist: DistInfo, keep_last: int, tensorboard: bool = False) -> None:
        self.directory = Path(directory)
        self.dist = dist
        self._tensorboard = tensorboard  # train.tensorboard: mirror the rows as events (tensorboard.py)
        self._events: Any = None
        # metrics rows of the run so far (kept in every checkpoint, mirrored in metrics.jsonl)
        self.history: list[dict[str, Any]] = []
        if tensorboard:  # before anything is made, so a refused start leaves nothing behind
            from clip4vla.train.tensorboard import TENSORBOARD_DIR, check_event_folder, require_tensorboard

            require_tensorboard()  # every rank: each imports it
            _checked_on_main(dist, lambda: check_event_folder(self.directory / TENSORBOARD_DIR))
        # the folders this start makes: removed again (when still empty) if the start fails
        self._made = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointWriteError(f"cannot create {self.checkpoints_dir}: {err}") from err
        try:
            self.lock = claim_run_folder(self.directory, dist)  # before anything in the folder is looked at
        except BaseException:
            self.discard_if_unused()
            raise
        self._made += [] if self.checkpoints_dir.exists() else [self.checkpoints_dir]
        try:
            self.checkpoints = CheckpointManager(self.checkpoints_dir, keep_last=keep_last)
        except OSError as err:
            self.release()
            self.discard_if_unused()
            raise CheckpointWriteError(f"cannot create {self.checkpoints_dir}: {err}") from err

    @property
    def checkpoints_dir(self) -> Path:
        return self.directory / "checkpoints"

    @property
    def best_path(self) -> Path:
        return self.checkpoints.directory / BEST_NAME

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_NAME

    @property
    def has_model(self) -> bool:
        """The run exported its model (a complete folder: it is written in one rename)."""
        return is_model_folder(self.model_path)

    def release(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        self.lock.release()

    def discard_if_unused(self) -> None:
        """After a failed start (lock released): the folders it made, if nothing was put in them."""
        if self.dist.is_main:
            for folder in sorted(self._made, key=lambda p: len(p.parts), reverse=True):
                try:
                    folder.rmdir()
                except OSError:  # holds something (config.yaml of a start that got that far): kept
                    break

    # -- start ---------------------------------------------------------------------------------

    def claim(self, overwrite: bool) -> None:
        """A fresh run never writes over another run's checkpoints unless asked to."""
        found = [p for _, p in self.checkpoints.checkpoints()]
        found += [p for p in (self.best_path, self.directory / LEGACY_MODEL_NAME) if p.is_file()]
        found += [self.model_path] if self.has_model else []
        if not found:
            return
        if not overwrite:
            raise RunFolderInUse(
                f"{self.directory} already holds a run ({', '.join(p.name for p in found[-3:])}): continue it with "
                f"--resume, start over with --overwrite (deletes them), or choose another train.output_dir"
            )
        barrier()  # every rank has looked before the main rank deletes
        if self.dist.is_main:
            for path in found:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            log.warning("--overwrite: deleted %d files of the previous run in %s", len(found), self.directory)
        barrier()

    def resume_state(self, task: str, config: RunConfig, allow_changes: bool
                     ) -> tuple[dict[str, Any], Path, dict[str, tuple]] | None:
        """The newest usable checkpoint and the config changes it is resumed with (checked)."""
        loaded = self.checkpoints.load_latest()
        if loaded is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.checkpoints.directory)
            return None
        state, path = loaded
        if "architecture" not in state or "config" not in state:
            raise CheckpointError(f"{path}: written by an older clip4vla (no architecture record); it cannot be resumed")
        if state.get("task") != task:
            raise ConfigError(
                f"{path} is a checkpoint of a {state.get('task')!r} run; this is {task!r} (choose another train.output_dir)"
            )
        changes = check_resume_config(state["config"], config_to_dict(config), allow_changes, str(path))
        return state, path, changes

    def write_config(self, config: RunConfig) -> None:
        if self.dist.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_config(config, self.directory / "config.yaml")  # what this run uses, resumed or not

    # -- metrics.jsonl -------------------------------------------------------------------------

    def write_history(self) -> None:
        if self.dist.is_main:
            write_text_atomic(self.directory / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.history))
            if self._tensorboard and self._events is None:  # a (resumed) run's events: exactly this log
                from clip4vla.train.tensorboard import TensorBoardLog

                self._events = TensorBoardLog(self.directory, self.history)

    def log_row(self, row: dict[str, Any]) -> None:
        """Keep a metrics row (in the checkpointed history) and append it to ``metrics.jsonl``."""
        self.history.append(row)
        if self.dist.is_main:
            with open(self.directory / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if self._events is not None:
                self._events.write(row)

    # -- best.pt and the model folder ------------------------------------------------------------------

    def save_best(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.best_path, state)

    def load_best(self) -> dict[str, Any]:
        return load_checkpoint(self.best_path)

    def save_checkpoint(self, step: int, state: Callable[[], dict[str, Any]], sharded: bool = False) -> None:
        """The main rank writes ``state()``; every rank learns whether it worked (so none waits on a
        dead peer). ``sharded`` (FSDP): every rank writes its shard of ``state()`` as well."""
        failure: BaseException | None = None
        if sharded:
            try:
                self.checkpoints.save_sharded(step, state(), self.dist.is_main, self.dist.device)
            except (CheckpointWriteError, FloatingPointError) as err:
                failure = err
        elif self.dist.is_main:
            try:
                self.checkpoints.save(step, state())
            except (CheckpointWriteError, FloatingPointError) as err:
                failure = err
        ok = all_reduce_mean(torch.tensor(0.0 if failure else 1.0, device=self.dist.device)).item()
        if failure is not None:
            raise failure
        if ok < 1.0:
            raise CheckpointWriteError(f"rank {self.dist.rank}: rank 0 could not write the checkpoint of step {step}")

    def export(self, model: CLIP4VLA, result: dict[str, Any], model_bytes: int, card: CardFacts,
               **training: Any) -> None:
        """The model folder with its card; a failed write keeps the test result for the report
        (:class:`ExportError`)."""
        try:
            export_model(model, self.model_path, model.preprocessing, card=card, **training)
        except OSError as err:
            reason = describe_write_failure(self.directory, model_bytes, err, "the model file")
            raise ExportError(
                f"{self.model_path} was not written: {reason}. The weights are in {self.checkpoints.directory}; "
                "free room and run again with --resume to export them",
                result,
            ) from err
