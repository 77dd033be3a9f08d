"""Reading checkpoints as untrusted input.

Checkpoints come from the internet (OpenAI's `.pt` TorchScript archives, the released CLIP4VLA
weights) or from disk where they may be truncated. This module turns any file into a plain
``{name: float32 tensor}`` dict or raises :class:`CheckpointError` naming the file; it never
executes pickled code (`torch.load(..., weights_only=True)`) and opens TorchScript archives only
to read their state dict. It knows nothing about model classes so that every model module can
use it without import cycles.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "ARCHIVE_SCALAR_KEYS",
    "CheckpointError",
    "check_state_dict",
    "is_torchscript_archive",
    "read_state_dict",
    "read_weights_only",
    "to_float32_state_dict",
]

# OpenAI's released archives carry these 0-dim int64 buffers next to the weights; they describe
# the architecture (which we infer from shapes anyway) and are not parameters of the model.
ARCHIVE_SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")

# How many offending keys an error message lists before summarising the rest.
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names file and key."""


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (has ``code/`` and ``constants.pkl``), False for anything else.

    Both ``torch.save`` and ``torch.jit.save`` write zip files with a ``data.pkl``; only the
    TorchScript one carries serialized code, which is what we look for.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_weights_only(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> object:
    """The one reader of ``torch.save`` files: ``torch.load(weights_only=True)``, so no pickled
    code ever runs; every failure (missing, truncated, foreign, unsafe) is a :class:`CheckpointError`
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/pickle/IO errors all mean "unreadable"
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err


def read_state_dict(path: str | os.PathLike) -> dict[str, object]:
    """Read a state dict from a plain ``torch.save`` file or a TorchScript archive.

    The returned dict is owned by the caller (nothing else references its tensors), so callers
    may convert entries in place to keep peak memory low.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                # OpenAI ships TorchScript; torch.jit.load's deprecation notice is not actionable
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
            state = dict(module.state_dict())
            del module  # drop the graph early; only the tensors are kept
        except Exception as err:  # truncated zips, bad pickles: all one failure
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    else:
        state = read_weights_only(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (mapping of names to tensors), got {type(state).__name__}"
        )
    return dict(state)


def to_float32_state_dict(
    state: Mapping[str, object], source: str, *, owned: bool, drop: tuple[str, ...] = ARCHIVE_SCALAR_KEYS
) -> dict[str, torch.Tensor]:
    """Drop archive scalars, check every value is a tensor, cast floating tensors to float32.

    ``owned=True`` means the caller handed over ``state`` (read from a file): it is consumed
    entry by entry so that an fp16 archive never holds both precisions of every tensor at once.
    ``owned=False`` (a dict the user still holds) copies, so the model never aliases the user's
    tensors.
    """
    out: dict[str, torch.Tensor] = {}
    for key in list(state.keys()):
        # when owned, pop so the original precision is released as soon as it is converted
        value = state.pop(key) if owned else state[key]  # type: ignore[attr-defined]
        if key in drop:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        with torch.no_grad():
            tensor = value.detach()
            if tensor.is_floating_point():
                tensor = tensor.to(torch.float32, copy=not owned)
            elif not owned:
                tensor = tensor.clone()
        out[key] = tensor
        del value
    return out


def check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], source: str
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the expected keys and shapes.

    Done before ``load_state_dict`` so that the message names the file and each offending key,
    and so that nothing is ever partially loaded.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not fit the model: " + "; ".join(problems))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
