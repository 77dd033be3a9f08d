"""FSDP checkpoints with ``torch.distributed.checkpoint`` (DCP): each rank writes its own shard.

A sharded checkpoint is a folder ``ckpt_<step:06d>/`` beside the single-file ones:

* DCP's files: ``.metadata`` (which tensor lives in which file, at which offset) and one
  ``__<rank>_0.distcp`` per rank with the model weights and AdamW moments that rank holds. No rank
  gathers the full model to save, so a ViT-L's 8.8 GB of weights and moments never sits in one
  process's memory;
* ``trainer.pt``: everything else (step, scheduler, scaler, RNG, config, history, the optimiser's
  parameter groups), written by rank 0 with ``torch.save`` and read with ``weights_only=True``.

Only tensors go into DCP's files, so reading them runs no pickled code; DCP's own ``.metadata`` is a
pickle, read by an unpickler that admits only DCP's metadata classes (a checkpoint is untrusted
input, as everywhere in clip4vla; :mod:`clip4vla.models.sharded_reader`, which also reads a folder's
full weights in one process, e.g. for ``clip4vla.from_pretrained``).

Atomic as the single files are: every rank writes into a hidden ``.tmp-ckpt_<step>`` folder, and
rank 0 gives it its name in one rename once every shard and ``trainer.pt`` are on disk. A folder
whose metadata names a shard that is missing or shorter than recorded is refused with a
:class:`CheckpointError` naming the file, and resume falls back to the previous checkpoint.

DCP reshards on load: a folder written by N ranks resumes on M ranks with FSDP, or into a plain
(DDP or single-process) model, which reads whole tensors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clip4vla.files import TMP_PREFIX, fsync_dir, save_checkpoint
from clip4vla.models.loading import CheckpointError
from clip4vla.models.sharded_reader import TRAINER_STATE, check_complete, metadata_reader

__all__ = ["sharded_state", "save_sharded", "load_sharded"]

SHARDED_KEYS = ("weights", "optimizer_state")  # what DCP holds; the rest of a trainer state is in trainer.pt


def sharded_state(trained: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The weights and optimiser state as DCP saves them: sharded tensors stay shards (no gather),
    optimiser state keyed by parameter name (so another world size or strategy maps it back).

    ``trained``: every module whose parameters ``optimizer`` steps, as ``nn.ModuleDict({"model":
    ..., "loss": ...})`` (the loss's temperature is trained too)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim_state = get_state_dict(trained, optimizer)
    return {"weights": weights, "optimizer_state": optim_state["state"],
            "optimizer_groups": optim_state["param_groups"]}


def save_sharded(final: Path, state: dict[str, Any], is_main: bool) -> None:
    """Write ``state`` (from a :class:`Stepper` with FSDP, plus the trainer's records) as the folder
    ``final``; a collective: every rank calls it. Raises on every rank when any rank failed."""
    import torch.distributed.checkpoint as dcp

    staging = final.with_name(f"{TMP_PREFIX}{final.name}")
    tensors = {key: state[key] for key in SHARDED_KEYS}
    rest = {key: value for key, value in state.items() if key not in SHARDED_KEYS}
    staging.mkdir(parents=True, exist_ok=True)
    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(staging, sync_files=True))  # gathers every rank's errors
    if is_main:
        save_checkpoint(staging / TRAINER_STATE, {**rest, "sharded": True})
        if final.exists():  # the same step saved again (a resumed run's last step): replaced whole
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_dir(final.parent)


def load_sharded(folder: Path, trained: nn.Module, optimizer: torch.optim.Optimizer,
                 groups: list[dict[str, Any]]) -> None:
    """Read a sharded checkpoint's weights and moments into ``trained`` (as for
    :func:`sharded_state`) and ``optimizer``, sharded or not, at this world size (a collective
    under a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    target = sharded_state(trained, optimizer)  # moments for every parameter (torch makes them up)
    stored = set(check_complete(folder).state_dict_metadata)
    # only the moments the run had: a parameter that never had a gradient (e.g. CLIP's own
    # temperature in pre-training) has none, and must not start its steps from a made-up count
    moments = {name: entry for name, entry in target["optimizer_state"].items()
               if any(key.startswith(f"optimizer_state.{name}.") for key in stored)}
    tensors = {"weights": target["weights"], "optimizer_state": moments}
    try:
        dcp.load(tensors, storage_reader=metadata_reader(folder))
    except Exception as err:
        raise CheckpointError(f"{folder}: the sharded checkpoint does not fit this model or cannot be read "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    # strict=False admits the parameters without moments; every weight was required by dcp.load
    set_state_dict(trained, optimizer, model_state_dict=tensors["weights"],
                   optim_state_dict={"state": tensors["optimizer_state"], "param_groups": groups},
                   options=StateDictOptions(strict=False))
