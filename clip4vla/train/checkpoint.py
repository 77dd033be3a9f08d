"""Training checkpoints: keep-last-N rotation, fallback past corrupt files, RNG capture.

A checkpoint is a file ``ckpt_<step>.pt`` (DDP and single-process runs) or, for FSDP runs, a folder
``ckpt_<step>/`` of per-rank shards (:mod:`clip4vla.train.sharded_checkpoint`); both rotate, fall
back and resume the same way.

A checkpoint is untrusted input, so it is read with ``torch.load(weights_only=True)``; everything
we write must survive that: tensors, numbers, strings, bytes, None and dict/list/tuple containers
only. RNG states are therefore stored as tensors and plain tuples. Writes are atomic
(:mod:`clip4vla.files`): a crash mid-write leaves the previous checkpoint untouched and no partial
file that looks like a checkpoint.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip4vla.files import TMP_PREFIX, save_checkpoint
from clip4vla.models.loading import CheckpointError, nonfinite_tensors, read_weights_only
from clip4vla.models.sharded_reader import read_trainer_state

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "check_writable",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointManager",
    "capture_rng_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"^ckpt_(\d+)(\.pt)?$")

def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; any failure is a :class:`CheckpointError`
    naming the file."""
    state = read_weights_only(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


class CheckpointManager:
    """``ckpt_<step:06d>.pt`` files in one directory, keeping the newest ``keep_last``.

    The latest checkpoint is found by listing (highest step), so there is no pointer file that
    could disagree with the directory. Only one process (the main rank) should save.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int | None = 3):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        """Leftovers of a writer that was killed mid-save (never valid checkpoints)."""
        for tmp in self.directory.glob(f"{TMP_PREFIX}ckpt_*"):
            logger.warning("removing incomplete checkpoint write %s", tmp)
            _remove(tmp)

    def path_for(self, step: int) -> Path:
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        return self.directory / f"ckpt_{step:06d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every checkpoint in the directory, oldest first."""
        found = []
        for p in self.directory.iterdir():
            match = _CKPT_RE.match(p.name)
            if match and (p.is_file() if match.group(2) else p.is_dir()):
                found.append((int(match.group(1)), p))
        return sorted(found)

    def save(self, step: int, state: dict) -> Path:
        """Write ``ckpt_<step>.pt`` atomically, then prune; weights must be finite.

        A failed write (full disk, read-only folder) leaves the previous checkpoints untouched and
        raises :class:`CheckpointWriteError` saying how much room a checkpoint needs.
        """
        bad = nonfinite_tensors(state.get("model", {}))
        if bad:
            raise FloatingPointError(
                f"refusing to write checkpoint of step {step}: {len(bad)} weight tensors are not finite "
                f"(e.g. {', '.join(bad[:3])})"
            )
        path = self.path_for(step)
        try:
            save_checkpoint(path, state)
        except (OSError, RuntimeError) as err:
            raise CheckpointWriteError(describe_write_failure(self.directory, state_bytes(state), err)) from err
        self._prune()
        return path

    def save_sharded(self, step: int, state: dict, is_main: bool, device: torch.device) -> Path:
        """Write the folder ``ckpt_<step>/`` with every rank's shard (a collective), then prune.

        Raises on every rank when a shard has non-finite weights or a rank's write fails; only the
        main rank's own write of ``trainer.pt`` can fail on it alone (the caller agrees on that).
        """
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.tensor import DTensor

        from clip4vla.train.distributed import all_reduce_mean
        from clip4vla.train.sharded_checkpoint import save_sharded

        local = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in state["weights"].items()}
        bad = nonfinite_tensors(local)
        if all_reduce_mean(torch.tensor(0.0 if bad else 1.0, device=device)).item() < 1.0:
            raise FloatingPointError(f"refusing to write checkpoint of step {step}: weight tensors are not finite"
                                     + (f" (e.g. {', '.join(bad[:3])})" if bad else " on another rank"))
        path = self.directory / f"ckpt_{step:06d}"
        try:
            save_sharded(path, state, is_main)
        except (OSError, RuntimeError, CheckpointException) as err:  # DCP's: every rank's failures, on every rank
            raise CheckpointWriteError(describe_write_failure(self.directory, state_bytes(state), err)) from err
        if is_main:
            self._prune()
        return path

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for _, old in self.checkpoints()[: -self.keep_last]:
            _remove(old)

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
        """The newest readable checkpoint with finite weights as ``(state, path)``; ``None`` if none.

        A newest file that is truncated, corrupt or holds NaN/inf weights (written by a diverging
        run before clip4vla checked) is skipped with a warning and the previous one is tried; if
        every checkpoint is unusable a :class:`CheckpointError` lists them.
        """
        failures = []
        for _, path in reversed(self.checkpoints()):
            try:
                if path.is_dir():  # sharded: the tensors are read once the model is built
                    state = {**read_trainer_state(path), "sharded_path": str(path)}
                else:
                    state = load_checkpoint(path, map_location)
                bad = nonfinite_tensors(state.get("model", {}))
                if bad:
                    raise CheckpointError(f"{path}: {len(bad)} weight tensors are not finite (e.g. {', '.join(bad[:3])})")
                return state, path
            except CheckpointError as err:
                warnings.warn(f"{err}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=2)
                failures.append(str(err))
        if failures:
            raise CheckpointError("no usable checkpoint in {}:\n  {}".format(self.directory, "\n  ".join(failures)))
        return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous ones are intact."""


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a nested checkpoint state (about its size on disk)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def describe_write_failure(directory: Path, needed: int, err: BaseException, what: str = "a checkpoint") -> str:
    """Why writing ``what`` into ``directory`` failed, in the user's terms (space, permissions)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = None
    mb = 1024 * 1024
    intact = "; the previous checkpoints are intact" if what == "a checkpoint" else ""
    full = getattr(err, "errno", None) == errno.ENOSPC or (free is not None and free < 1.5 * needed)
    if full:
        room = f", {free / mb:.0f} MB free" if free is not None else ""
        return f"no space left on {directory} (need ~{needed / mb:.0f} MB for {what}{room}){intact} ({type(err).__name__}: {err})"
    if isinstance(err, PermissionError):
        return f"no permission to write in {directory}: {err}"
    return f"could not write {what} into {directory} ({type(err).__name__}: {err}){intact}"


def check_writable(directory: Path, needed: int, keep_last: int) -> None:
    """At start-up, not after hours of training: the folder takes files and has room for them."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f"{TMP_PREFIX}write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise CheckpointWriteError(f"cannot write checkpoints into {directory}: {err}") from err
    free = shutil.disk_usage(directory).free
    mb = 1024 * 1024
    if free < needed:
        raise CheckpointWriteError(
            f"no space for a checkpoint on {directory}: need ~{needed / mb:.0f} MB, {free / mb:.0f} MB free"
        )
    if free < (keep_last + 2) * needed:
        logger.warning("%s: %.0f MB free, checkpoints take ~%.0f MB each (keep_last=%d): the disk may fill up",
                       directory, free / mb, needed / mb, keep_last)
    else:
        logger.info("checkpoints: ~%.0f MB each, keep_last=%d, %.0f MB free in %s",
                    needed / mb, keep_last, free / mb, directory)


# ----------------------------------------------------------------------------------------------
# RNG state in weights_only-safe form
# ----------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Python ``random``, NumPy's global generator, torch CPU and (if initialised) CUDA states,
    as tensors and plain tuples/numbers so that ``weights_only`` loading accepts them."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain types
        "numpy": {
            "algorithm": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored only if present and CUDA is
    available with the same number of devices)."""
    try:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
        np_s = state["numpy"]
        np.random.set_state(
            (
                np_s["algorithm"],
                np_s["keys"].cpu().numpy().astype(np.uint32),
                int(np_s["pos"]),
                int(np_s["has_gauss"]),
                float(np_s["cached_gaussian"]),
            )
        )
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"malformed RNG state in checkpoint: {type(err).__name__}: {err}") from err
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])
        else:
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda)} devices, this machine has "
                f"{torch.cuda.device_count()}; CUDA RNG not restored",
                RuntimeWarning,
                stacklevel=2,
            )
