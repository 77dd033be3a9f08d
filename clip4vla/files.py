"""Files written so that a crash never leaves a half-written one under the final name.

Every output a user relies on (checkpoints, model files, metrics, feature shards, search indexes)
goes through here: written under a hidden temporary name in the target directory, flushed and
fsynced, then ``os.replace``d over the final name, and the directory fsynced. A crash mid-write
leaves the previous file untouched.

Torch files must read back with ``torch.load(weights_only=True)`` (files are untrusted input), so
:func:`save_checkpoint` refuses at save time what that loader would refuse later.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["TMP_PREFIX", "drop_cut_last_line", "fsync_dir", "fsync_file", "nearest_existing", "probe_writable", "save_checkpoint", "write_atomic",
           "write_folder_atomic", "write_text_atomic"]

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"  # hidden, and never matches a checkpoint name

# leaf types torch.load(weights_only=True) reads back
_SAFE_LEAVES = (torch.Tensor, int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device)


def _check_safe(obj: Any, where: str) -> None:
    """Reject what ``weights_only`` loading would refuse, at save time and with the key path."""
    if isinstance(obj, _SAFE_LEAVES):
        return
    if type(obj) in (dict, OrderedDict):  # exact types: e.g. defaultdict is refused by the loader
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {where}[{key!r}] has type {type(key).__name__}; use str or int keys")
            _check_safe(value, f"{where}.{key}" if where else str(key))
        return
    if type(obj) in (list, tuple, torch.Size):
        for i, value in enumerate(obj):
            _check_safe(value, f"{where}[{i}]")
        return
    hint = " (convert it with torch.from_numpy)" if isinstance(obj, (np.ndarray, np.generic)) else ""
    raise TypeError(
        f"checkpoint entry {where or '<root>'} has type {type(obj).__module__}.{type(obj).__qualname__}, "
        f"which torch.load(weights_only=True) cannot read{hint}"
    )


def fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def write_folder_atomic(folder: str | os.PathLike, write: Callable[[Path], None],
                        replaceable: Callable[[Path], bool]) -> Path:
    """Call ``write(staging)`` on a hidden folder beside ``folder``, then give it the final name in
    one rename: ``folder`` is the previous one or the complete new one, whenever the process dies.

    An existing ``folder`` is replaced only when ``replaceable(folder)`` says it is one of ours (a
    user's folder of the same name is never removed); it is moved aside first, put back if the
    swap fails, and removed after.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not (folder.is_dir() and (replaceable(folder) or not any(folder.iterdir()))):
        raise FileExistsError(f"{folder} exists and is not what this writes: not replaced (remove it or choose another)")
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{folder.name}.", dir=folder.parent))
    old = folder.parent / f"{TMP_PREFIX}{folder.name}.old-{os.getpid()}"
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        write(staging)
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file another library wrote (safetensors writes by path) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists: where a file or folder for ``path`` would be
    created, checked before anything is made."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder`` (an ``OSError`` if that fails): tried, since permission
    bits do not say it all (read-only mounts, ACLs, root)."""
    fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}write-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically, refusing what ``weights_only`` loading could not read."""
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    _check_safe(state, "")
    return write_atomic(path, lambda f: torch.save(state, f))


def drop_cut_last_line(path: Path, consequence: str) -> None:
    """Drop a last line without its newline (a kill during an append to a JSON-lines file), so the
    next append starts a line of its own instead of being glued onto it and lost; ``consequence``
    says in the warning what happens to the record that line held."""
    if not path.is_file():
        return
    with open(path, "rb+") as fh:
        end = keep = fh.seek(0, os.SEEK_END)
        if end == 0:
            return
        while keep > 0:  # back from the end to the last newline, a block at a time (an index can be large)
            start = max(0, keep - (1 << 16))
            fh.seek(start)
            block = fh.read(keep - start)
            if end == keep and block.endswith(b"\n"):
                return
            if b"\n" in block:
                keep = start + block.rfind(b"\n") + 1
                break
            keep = start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("%s: its last line was cut by a kill (%d bytes) and is removed; %s", path, end - keep, consequence)
