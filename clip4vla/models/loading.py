"""Reading checkpoints as untrusted input.

Checkpoints come from the internet (OpenAI's `.pt` TorchScript archives, the released CLIP4VLA
weights) or from disk where they may be truncated. This module turns any file into a plain
``{name: float32 tensor}`` dict or raises :class:`CheckpointError` naming the file; it never
executes code from a file: ``torch.save`` files go through ``torch.load(weights_only=True)``, and
TorchScript archives, whose pickled modules would run their own ``__setstate__`` code under
``torch.jit.load``, are unpickled by :func:`read_torchscript_state_dict` with an allow-list that
turns every module into an inert holder and only rebuilds tensors; ``.safetensors`` files (open_clip's
``open_clip_model.safetensors``) are read with the ``safetensors`` package, which has no pickle at
all. It knows nothing about model classes so that every model module can use it without import cycles.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ARCHIVE_SCALAR_KEYS",
    "CheckpointError",
    "check_state_dict",
    "is_safetensors_file",
    "is_torchscript_archive",
    "missing_model_hint",
    "nonfinite_tensors",
    "read_model_container",
    "read_state_dict",
    "read_safetensors",
    "require_checkpoint_file",
    "read_torchscript_state_dict",
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


def missing_model_hint(path: str | os.PathLike) -> str:
    """What to do about a missing model file: the quick start's is written by the main job."""
    if Path(path).as_posix().endswith(("pretrain_synthetic/model", "pretrain_synthetic/model.pt")):
        return ": run `python scripts/pretrain.py` first (the quick start writes it)"
    return ""


def require_checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``; a :class:`CheckpointError` (with what to do) when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found{missing_model_hint(path)}")
    return path


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


def is_safetensors_file(path: str | os.PathLike) -> bool:
    """True for a safetensors file: an 8-byte little-endian header length, then a JSON header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file (nothing in the format can run code)."""
    path = require_checkpoint_file(path)
    try:
        from safetensors.torch import load_file
    except ImportError as err:  # an install without the dependency: say what to do
        raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors)") from err
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # header, dtype or size errors all mean "unreadable"
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(err).__name__}: {err})") from err


def read_weights_only(path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> object:
    """The one reader of ``torch.save`` files (model files, checkpoints, search indexes, feature
    shards): ``torch.load(weights_only=True)``, so no pickled code ever runs; every failure
    (missing, truncated, foreign, unsafe) is a :class:`CheckpointError` naming the file as ``what``."""
    path = require_checkpoint_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/pickle/IO errors all mean "unreadable"
        raise CheckpointError(f"{path}: cannot read {what}: {_unreadable_reason(path, err)}") from err


def _unreadable_reason(path: Path, err: BaseException) -> str:
    """Why ``torch.load`` failed, in our terms. torch's own text advises ``weights_only=False``,
    which would run the file's pickled code: never the way forward for an untrusted file."""
    text = str(err)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(8)
        return (f"not a PyTorch file (torch.save writes a zip archive; this one starts with {head!r}, "
                f"{path.stat().st_size} bytes)")
    if "Weights only load failed" in text or "weights_only" in text:
        detail = next((line.strip() for line in text.splitlines() if line.strip().startswith("WeightsUnpickler error")), "")
        return ("it holds pickled objects other than tensors, which clip4vla never loads (no code from a model "
                f"file runs){': ' + detail if detail else ''}")
    return f"a damaged or truncated archive ({type(err).__name__}: {text.splitlines()[0] if text else ''})"


def nonfinite_tensors(tensors: Any) -> list[str]:
    """Names of floating tensors in a (state-dict) mapping that hold NaN or inf."""
    if not isinstance(tensors, Mapping):
        return []
    return [k for k, v in tensors.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


class _ScriptModule:
    """Inert stand-in for a pickled TorchScript module: keeps its attributes, runs nothing.

    One subclass per archive class name (the pickle's NEWOBJ needs a type), made by
    :meth:`_ArchiveUnpickler.find_class`.
    """

    qualified_name = ""
    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a TorchScript archive without importing or calling anything
    beyond the tensor-rebuilding functions; storages are read from the archive's records."""

    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                ("collections", "OrderedDict")}

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> object:
        if module.startswith("__torch__"):
            # a class of the archive's own code: never imported, never run
            return type(name, (_ScriptModule,), {"qualified_name": f"{module}.{name}"})
        if (module, name) in self._ALLOWED:
            return getattr(importlib.import_module(module), name)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]  # persistent ids name a storage class; only its dtype matters
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"storage {key}: unknown storage type {dtype!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != numel * itemsize:
            raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes, the pickle says {numel} x {itemsize}")
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


_DECLARED = re.compile(r"__(parameters|buffers)__ = \[([^\]]*)\]")


def _state_names(archive: zipfile.ZipFile, prefix: str, qualified_name: str) -> set[str]:
    """The parameter and buffer names a module class declares in its source (read as text)."""
    module, _, cls = qualified_name.rpartition(".")
    path = f"{prefix}/code/{module.replace('.', '/')}.py"
    try:
        source = archive.read(path).decode("utf-8")
    except KeyError:
        return set()
    body = source[source.find(f"class {cls}("):]
    names: set[str] = set()
    for match in _DECLARED.finditer(body.split("\nclass ", 1)[0]):
        names.update(n.strip().strip("\"'") for n in match.group(2).split(",") if n.strip())
    return names


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, without running any of its code.

    ``torch.jit.load`` would execute the archive's TorchScript (a crafted ``__setstate__`` runs at
    load time); here the module tree is unpickled into inert holders (:class:`_ArchiveUnpickler`)
    and walked, keeping the tensors each class declares as ``__parameters__`` / ``__buffers__``.
    """
    return read_torchscript_archive(path)[0]


def read_torchscript_archive(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`read_torchscript_state_dict` plus the class name of every module (``{"visual.x": "QuickGELU"}``),
    which records what a state dict cannot, such as a block's activation."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError(f"{path}: TorchScript archive without data.pkl")
        prefix = pickles[0].split("/")[0]
        root = _ArchiveUnpickler(archive.read(pickles[0]), archive, prefix).load()
        state: dict[str, torch.Tensor] = {}
        classes: dict[str, str] = {}

        def walk(obj: object, where: str) -> None:
            if not isinstance(obj, _ScriptModule) or not isinstance(obj.state, dict):
                return
            classes[where.rstrip(".")] = obj.qualified_name.rpartition(".")[2]
            declared = _state_names(archive, prefix, obj.qualified_name)
            for name, value in obj.state.items():
                if isinstance(value, torch.Tensor) and name in declared:
                    state[f"{where}{name}"] = value
                elif isinstance(value, _ScriptModule):
                    walk(value, f"{where}{name}.")

        walk(root, "")
    if not state:
        raise CheckpointError(f"{path}: TorchScript archive holds no parameters")
    return state, classes


def read_model_container(path: str | os.PathLike) -> tuple[dict[str, object], str, dict[str, str]]:
    """``(contents, container, module classes)``: :func:`read_state_dict` that also says which kind
    of file it read (``"torchscript"``, ``"safetensors"`` or ``"torch"``) and, for a TorchScript
    archive, the class of each module (empty otherwise)."""
    path = require_checkpoint_file(path)
    if is_torchscript_archive(path):
        try:
            state, classes = read_torchscript_archive(path)
        except CheckpointError:
            raise
        except Exception as err:  # truncated zips, bad pickles, refused classes: all one failure
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
        return dict(state), "torchscript", classes
    if is_safetensors_file(path):
        return dict(read_safetensors(path)), "safetensors", {}
    state = read_weights_only(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (mapping of names to tensors), got {type(state).__name__}"
        )
    return dict(state), "torch", {}


def read_state_dict(path: str | os.PathLike) -> dict[str, object]:
    """Read a state dict from a plain ``torch.save`` file, a TorchScript archive or a safetensors file.

    The returned dict is owned by the caller (nothing else references its tensors), so callers
    may convert entries in place to keep peak memory low.
    """
    return read_model_container(path)[0]


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
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the keys, shapes and kinds of
    number (floating or not) of ``expected`` (the model's own ``state_dict()``, meta tensors will do).

    Done before ``load_state_dict`` so that the message names the file and each offending key,
    and so that nothing is ever partially loaded (an integer tensor for a weight would otherwise
    fail inside ``load_state_dict`` with a message that names neither).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    present = [k for k in expected if k in state]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in present if tuple(state[k].shape) != tuple(expected[k].shape)]
    kinds = [f"{k}: checkpoint {state[k].dtype}, model {expected[k].dtype}"
             for k in present if state[k].is_floating_point() != expected[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {_listing(wrong)}")
    if kinds:
        problems.append(f"dtype mismatch {_listing(kinds)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not fit the model: " + "; ".join(problems))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
