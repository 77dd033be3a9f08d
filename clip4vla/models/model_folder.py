"""The model folder: the unit a run exports, a user shares and every loader reads.

A folder of three files, the layout the Hugging Face Hub shows and its tools upload as is::

    model.safetensors   every weight (float32), no pickle: nothing in the format can run code
    config.json         the architecture, the preprocessing, the format version, what trained it
    README.md           the model card (``clip4vla.models.card``), written by the run itself

Reading checks everything before a tensor reaches a model: the format name and version, the
safetensors header (its size against the file's, before the library parses it), every tensor's
dtype against ``config.json``, and then (``clip4vla.models.checkpoints``) the names and shapes
against the architecture the config describes. Writing goes to a hidden folder beside the target
that replaces it in one rename, so a killed export never leaves a half folder under the real name.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from clip4vla.files import fsync_file, write_folder_atomic, write_text_atomic
from clip4vla.models.loading import CheckpointError

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "FOLDER_FORMAT",
    "FOLDER_FORMAT_VERSION",
    "WEIGHTS_NAME",
    "folder_files",
    "is_model_folder",
    "read_folder_config",
    "read_folder_weights",
    "write_model_folder",
]

FOLDER_FORMAT = "clip4vla-model"
FOLDER_FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
# A header is a JSON table of tensor names, dtypes and offsets: a few hundred bytes per tensor. The
# safetensors library refuses headers over 100 MB itself; ours fail earlier, with the file named.
MAX_HEADER_BYTES = 100 * 2**20
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder whose ``config.json`` says it is ours (not a transformers or open_clip config)."""
    config = Path(path) / CONFIG_NAME
    if not Path(path).is_dir() or not config.is_file():
        return False
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # ours or not, a damaged config.json is reported by read_folder_config
    return isinstance(record, Mapping) and record.get("format") == FOLDER_FORMAT


def folder_files(folder: str | os.PathLike) -> list[Path]:
    """The files that make a model folder's identity (the card is description, not model)."""
    return [Path(folder) / CONFIG_NAME, Path(folder) / WEIGHTS_NAME]


def read_folder_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json``, checked for our format and a version this clip4vla reads."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        shown = ", ".join(sorted(p.name for p in Path(folder).iterdir())[:8]) if Path(folder).is_dir() else ""
        raise CheckpointError(f"{path}: not found: a model folder needs {CONFIG_NAME} beside {WEIGHTS_NAME}"
                              f"{f' (the folder holds {shown})' if shown else ''}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the model config ({type(err).__name__}: {err})") from err
    if not isinstance(record, Mapping):
        raise CheckpointError(f"{path}: the model config is a {type(record).__name__}, expected a JSON object")
    if record.get("format") != FOLDER_FORMAT:
        raise CheckpointError(f"{path}: not a clip4vla model config (its \"format\" is {record.get('format')!r}, "
                              f"ours is {FOLDER_FORMAT!r}; a transformers or other library's model does not load here)")
    version = record.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: \"format_version\" is {version!r}, expected a whole number")
    if version > FOLDER_FORMAT_VERSION:
        raise CheckpointError(f"{path}: model folder format version {version}, written by a newer clip4vla; this "
                              f"one reads up to version {FOLDER_FORMAT_VERSION} (pip install -U clip4vla)")
    if version < 1:
        raise CheckpointError(f"{path}: model folder format version {version} does not exist")
    for key in ("architecture", "preprocessing"):
        if not isinstance(record.get(key), Mapping):
            raise CheckpointError(f"{path}: \"{key}\" is missing or not a JSON object")
    return dict(record)


def _header(path: Path) -> dict[str, Any]:
    """The safetensors header, read by hand: its length is checked against the file first, so a
    corrupt length never makes a reader allocate gigabytes or parse the tensors as JSON."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: {size} bytes: too short for a safetensors file (a cut download?)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise CheckpointError(f"{path}: corrupt safetensors header: it claims {length} bytes, the file has "
                                      f"{size} (a cut or damaged file)")
            raw = fh.read(length)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err})") from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {err})") from err
    if not isinstance(header, Mapping):
        raise CheckpointError(f"{path}: corrupt safetensors header (a {type(header).__name__}, not a table)")
    return dict(header)


def read_folder_weights(folder: str | os.PathLike, dtype: str) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors``; each floating one must be ``dtype`` (config.json's)."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (the model folder has {CONFIG_NAME} but no weights; "
                              "a download that did not finish?)")
    header = _header(path)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        stored = _DTYPE_NAMES.get(entry.get("dtype")) if isinstance(entry, Mapping) else None
        if stored is None:
            raise CheckpointError(f"{path}: tensor {name!r} has an unreadable header entry {entry!r}")
        if stored != dtype and stored not in ("int64", "int32", "int16", "int8", "uint8", "bool"):
            raise CheckpointError(f"{path}: tensor {name!r} is {stored}, {CONFIG_NAME} says the weights are {dtype}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # offsets past the end, overlapping tensors: all "damaged"
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(err).__name__}: {err})") from err


def write_model_folder(folder: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                       card: str, extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` as one unit
    (:func:`clip4vla.files.write_folder_atomic`: a killed export leaves the previous folder);
    ``extra(folder)`` adds more files to the same unit (the ONNX encoders).

    Tensors are saved contiguous and unshared: safetensors stores no aliasing, and the reader
    builds every tensor on its own.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in seen:  # tied weights: a copy of its own
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    record = {"format": FOLDER_FORMAT, "format_version": FOLDER_FORMAT_VERSION, **config}

    def write(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        fsync_file(staging / WEIGHTS_NAME)
        write_text_atomic(staging / CONFIG_NAME, json.dumps(record, indent=2) + "\n")
        write_text_atomic(staging / CARD_NAME, card)
        if extra is not None:
            extra(staging)

    return write_folder_atomic(folder, write, is_model_folder)
