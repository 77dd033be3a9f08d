"""Where a model comes from: a local path, or a Hugging Face Hub id resolved to a local snapshot.

Every loader (``clip4vla.from_pretrained``, ``--model``, ``model.init_from``, ``clip4vla-search
--model``) passes what the user wrote through :func:`locate_model` and then reads a local file or
folder, so a Hub model behaves exactly like the same folder on disk.

A **Hub id** is ``org/name`` or ``org/name@revision`` (a branch, tag or commit), optionally written
``hf-hub:org/name`` as open_clip does. A local path always wins: ``runs/finetune`` that exists is
the folder, not a Hub repository. The Hub is reached only through ``huggingface_hub``
(``snapshot_download``), which keeps its own cache (``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``) and, with ``HF_HUB_OFFLINE=1``, reads only that cache. Only the files
a model needs are fetched: a clip4vla folder's three files, or an open_clip repository's config and
safetensors weights (not the transformers copy of the same weights that such repositories also hold).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clip4vla.models.loading import CheckpointError, missing_model_hint
from clip4vla.models.model_folder import CONFIG_NAME, FOLDER_FORMAT, WEIGHTS_NAME, is_model_folder

__all__ = ["HUB_PREFIX", "HubModelError", "hub_cache_dir", "locate_model", "parse_hub_id"]

HUB_PREFIX = "hf-hub:"
# The Hub's own rule for repository names: letters, digits, "-", "_", "."; no "--" or ".." runs,
# no leading or trailing "-" or "."; at most 96 characters.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"({_NAME})/({_NAME})(?:@([A-Za-z0-9._/-]{{1,200}}))?")
_OPEN_CLIP_CONFIG = "open_clip_config.json"
# the weights each kind of repository is read from (an open_clip repository also holds a
# transformers copy, model.safetensors, and a pickle, open_clip_pytorch_model.bin: neither is fetched)
_WEIGHTS = {"clip4vla": WEIGHTS_NAME, "open_clip": "open_clip_model.safetensors"}
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class HubModelError(CheckpointError):
    """A Hub id that cannot be resolved (bad characters, not in the cache offline, not on the Hub)."""


def hub_cache_dir() -> Path:
    """The folder ``huggingface_hub`` caches in (its own setting, read when it is imported)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``spec`` is written as a Hub id, else None.

    ``hf-hub:`` marks a Hub id for sure, and a malformed one is then an error; without the prefix a
    string is a Hub id only when it has the shape of one (one ``/``, no file suffix such as ``.pt``),
    so a mistyped local path is reported as a missing file, not looked up on the Hub.
    """
    explicit = spec.startswith(HUB_PREFIX)
    text = spec[len(HUB_PREFIX):] if explicit else spec
    match = _HUB_ID.fullmatch(text)
    bad_runs = match is not None and any(("--" in part or ".." in part) for part in match.group(1, 2))
    if match is None or bad_runs:
        if explicit:
            raise HubModelError(f"{spec!r} is not a Hugging Face Hub id: write org/name or org/name@revision (letters, "
                                "digits, '-', '_' and '.', no '--' or '..')")
        return None
    if not explicit and (text.startswith((".", "/")) or text.lower().endswith(_WEIGHT_SUFFIXES)):
        return None
    return f"{match.group(1)}/{match.group(2)}", match.group(3)


def locate_model(spec: str | os.PathLike) -> Path:
    """The local file or folder for a model: ``spec`` itself when it exists, else the snapshot of
    the Hub id it names (module docstring). Raises :class:`CheckpointError` for a path that is
    neither, with what was looked for."""
    path = Path(spec)
    if path.exists():
        return path
    text = os.fspath(spec)
    parsed = parse_hub_id(text)
    if parsed is None:
        raise CheckpointError(f"{path}: model file or folder not found{missing_model_hint(path)}")
    return _snapshot(text, *parsed)


def _snapshot(spec: str, repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as err:
        raise HubModelError(f"{spec}: not a local path, and reading Hub ids needs huggingface_hub "
                            "(pip install huggingface_hub)") from err
    cache = Path(constants.HF_HUB_CACHE)
    where = f"{repo_id}{'@' + revision if revision else ''}"
    offline = " (HF_HUB_OFFLINE is set: only the cache is read)" if constants.HF_HUB_OFFLINE else ""
    try:
        # the small files first: they say which weights this repository's model is
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "README.md"]))
        kind = _kind(folder)
        if kind is not None:
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[_WEIGHTS[kind]]))
    except Exception as err:  # validation, not cached offline, not found, network: all "cannot resolve"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubModelError(f"{spec}: no local file or folder of that name, and the Hugging Face Hub model {where} "
                            f"could not be resolved{offline}: {type(err).__name__}: {reason} (Hub cache: {cache}; "
                            "download it once with network access, or pass a local path)") from err
    if kind is None:
        shown = ", ".join(sorted(p.name for p in folder.iterdir())[:8])
        raise HubModelError(f"{spec}: the Hub repository {where} holds neither a clip4vla model folder ({CONFIG_NAME} "
                            f"with \"format\": \"{FOLDER_FORMAT}\") nor an open_clip model ({_OPEN_CLIP_CONFIG}); "
                            f"its files: {shown or 'none'}")
    needed = [CONFIG_NAME, WEIGHTS_NAME] if kind == "clip4vla" else [_OPEN_CLIP_CONFIG, _WEIGHTS[kind]]
    lacking = [name for name in needed if not (folder / name).is_file()]
    if lacking:
        raise HubModelError(f"{spec}: the cached snapshot {folder} lacks {', '.join(lacking)} (an interrupted "
                            "download? run again with network access to complete it)")
    return folder


def _kind(folder: Path) -> str | None:
    """``"clip4vla"`` (our config.json), ``"open_clip"`` (open_clip_config.json) or None."""
    if is_model_folder(folder):
        return "clip4vla"
    return "open_clip" if (folder / _OPEN_CLIP_CONFIG).is_file() else None
