"""Reading an FSDP run's sharded checkpoint folder (``torch.distributed.checkpoint``) in one
process: its full model weights, for ``clip4vla.from_pretrained`` / ``export_model.py`` and tests.

The folder (written by :mod:`clip4vla.train.sharded_checkpoint`) holds DCP's ``.metadata`` (which
tensor lives in which shard file, at which offset), one ``__<rank>_0.distcp`` per rank and
``trainer.pt``. DCP's ``.metadata`` is a pickle; a checkpoint is untrusted input, so it is read by an
unpickler that admits only DCP's record classes, torch's sizes, dtypes and layouts, and paths.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from clip4vla.models.loading import CheckpointError, read_weights_only

__all__ = ["METADATA", "TRAINER_STATE", "is_sharded_checkpoint", "check_complete", "metadata_reader",
           "read_trainer_state", "read_sharded_model"]

TRAINER_STATE = "trainer.pt"
METADATA = ".metadata"


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """``trainer.pt`` of a sharded checkpoint (all but the tensors), after checking that its shards
    are all there (a missing or truncated one is a :class:`CheckpointError` naming it)."""
    state = read_weights_only(folder / TRAINER_STATE, what="trainer checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / TRAINER_STATE}: holds a {type(state).__name__}, expected a dict")
    check_complete(folder)
    return state


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / TRAINER_STATE).is_file() and (path / METADATA).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's ``.metadata`` without running arbitrary code: DCP's record classes (no functions),
    torch's sizes, dtypes and layouts, and paths; anything else is refused."""

    _ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
                ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name) if (module, name) in self._ALLOWED or module in (
            "torch", "torch.distributed.checkpoint.metadata") else None
        if (module, name) in self._ALLOWED or isinstance(found, torch.dtype) or (
                module == "torch.distributed.checkpoint.metadata" and isinstance(found, type)):
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def metadata_reader(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(self.path) / METADATA, "rb") as fh:
                metadata = _MetadataUnpickler(io.BytesIO(fh.read())).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def check_complete(folder: Path) -> Any:
    """Every file the metadata names exists and holds the bytes it should; the metadata (DCP's
    ``Metadata``) for the caller's own use."""
    if not (folder / METADATA).is_file():
        raise CheckpointError(f"{folder}: no {METADATA} (not a complete sharded checkpoint)")
    try:
        metadata = metadata_reader(folder).read_metadata()
    except Exception as err:
        raise CheckpointError(f"{folder}/{METADATA}: unreadable ({type(err).__name__}: {err})") from err
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        shard = folder / name
        if not shard.is_file():
            raise CheckpointError(f"{folder}: shard {name} is missing ({len(needed)} shard files recorded)")
        if shard.stat().st_size < size:
            raise CheckpointError(f"{shard}: truncated ({shard.stat().st_size} of {size} bytes)")
    return metadata


def read_sharded_model(folder: Path) -> dict[str, torch.Tensor]:
    """The full model weights of a sharded checkpoint, read in this process alone (no process
    group): what a test compares or a user inspects."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = check_complete(folder)
    prefix = "weights.model."
    model = {key[len(prefix):]: torch.empty(entry.size, dtype=entry.properties.dtype)
             for key, entry in metadata.state_dict_metadata.items()
             if key.startswith(prefix) and isinstance(entry, TensorStorageMetadata)}
    dcp.load({"weights": {f"model.{key}": value for key, value in model.items()}}, storage_reader=metadata_reader(folder),
             no_dist=True)
    return model
