"""What a resumed run may change, and how the changes it makes take effect.

A checkpoint stores the config its run used. On ``--resume`` the new config is compared key by
key with it:

* **free to change** (:data:`RESUME_FREE`): the length of the run and the cadences and plumbing
  that do not touch what was learnt — ``train.epochs`` / ``train.max_steps`` (the cosine schedule
  is recomputed for the new horizon, as if the run had been configured so from the start, and the
  log says where it now ends), logging, validation and checkpoint cadence, ``keep_last``, device,
  data loader workers, the distributed timeout;
* **never**: the model's architecture (:data:`RESUME_ARCHITECTURE`, the activation included; the
  checkpoint's weights fit only the model they were trained as, and its own architecture record is
  compared too), the
  batch geometry (:data:`RESUME_FIXED`: ``train.batch_size``, ``train.accum_steps``; the data
  position of a step would no longer be the one the checkpoint was taken at) and the task;
* **ignored** (:data:`RESUME_IGNORED`): ``model.init_from`` is not read on resume, since every
  weight comes from the checkpoint;
* **everything else** (learning rates, precision, losses, data paths...) is refused with a message
  naming every differing key, unless the user passes ``--allow-config-change``; then the new values
  are used (a new learning rate really is the learning rate from the next step on), the change is
  logged, and ``config.yaml`` records what the run now uses.
"""

from __future__ import annotations

from typing import Any

from clip4vla.config import ConfigError
from clip4vla.models.loading import CheckpointError

__all__ = ["RESUME_ARCHITECTURE", "RESUME_FIXED", "RESUME_FREE", "RESUME_IGNORED", "config_changes", "check_architecture", "check_resume_config",
           "flatten"]

RESUME_FREE = frozenset({
    "train.epochs", "train.max_steps", "train.log_every", "train.eval_every_steps", "train.eval_every_epochs",
    "train.checkpoint_every_steps", "train.keep_last", "train.device", "train.dist_timeout_s",
    "data.num_workers", "data.cache_decoded", "train.tensorboard",
    # checkpoints hold full tensors whatever the strategy: a DDP run resumes under FSDP and back
    "train.strategy", "train.compile",  # how the same computation runs
    # what the model card says (licence, description, tags): words about the model, not the model
    "train.card.name", "train.card.license", "train.card.description", "train.card.tags", "train.card.datasets",
})
RESUME_FIXED = frozenset({"train.batch_size", "train.accum_steps"})
# The model the checkpoint's weights belong to: no flag can make them fit another one. The activation
# (and the open_clip name that implies one) is in no tensor: a resume with another would record in
# config.yaml a model the checkpoint's record does not build. Heads and resolution come from that
# record alone (init_from is not read on resume).
RESUME_ARCHITECTURE = frozenset({
    "model.arch", "model.activation", "model.open_clip_model", "model.audio_type_token", "retrieval.fusion",
    "retrieval.fusion_layers", "caption.fusion_layers",
})
# Not read on resume (every weight comes from the checkpoint), so it may move or go.
RESUME_IGNORED = frozenset({"train.output_dir", "model.init_from"})


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}`` (lists and None stay leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def config_changes(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs: ``{key: (stored value, new value)}``."""
    old_flat, new_flat = flatten(stored), flatten(new)
    missing = object()
    changes = {}
    for key in sorted(set(old_flat) | set(new_flat)):
        a, b = old_flat.get(key, missing), new_flat.get(key, missing)
        a = None if a is missing else a
        b = None if b is missing else b
        if _normal(a) != _normal(b):
            changes[key] = (a, b)
    return changes


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_resume_config(stored: dict[str, Any], new: dict[str, Any], allow_changes: bool, source: str) -> dict[str, tuple]:
    """The changes a resume makes; ``ConfigError`` naming each key it may not make."""
    changes = {k: v for k, v in config_changes(stored, new).items() if k not in RESUME_IGNORED}
    architecture = {k: v for k, v in changes.items() if k in RESUME_ARCHITECTURE}
    fixed = {k: v for k, v in changes.items() if k in RESUME_FIXED}
    guarded = {k: v for k, v in changes.items() if k not in RESUME_FREE | RESUME_FIXED | RESUME_ARCHITECTURE}
    if architecture:
        raise ConfigError(
            f"cannot resume {source}: the architecture cannot change on resume ({_listing(architecture)}); its "
            "weights only fit the model they were trained as. Resume with the old values, or start a new run "
            "in another train.output_dir"
        )
    if fixed:
        raise ConfigError(
            f"cannot resume {source} with another {', '.join(sorted(fixed))}: "
            + _listing(fixed) + " (the data position of every step depends on it); start a new run instead"
        )
    if guarded and not allow_changes:
        raise ConfigError(
            f"resuming {source} with a different config: " + _listing(guarded)
            + ". Pass --allow-config-change to train on with the new values, or resume with the old ones"
        )
    return changes


def _listing(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key} was {old!r}, now {new!r}" for key, (old, new) in changes.items())


def check_architecture(stored: dict[str, Any], built: dict[str, Any], source: Any) -> None:
    """A checkpoint's weights fit only the model they were trained as: any difference is refused."""
    differences = config_changes(stored, built)
    if differences:
        raise CheckpointError(
            f"{source}: the architecture cannot change on resume: "
            + "; ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in differences.items())
            + " (start a new run in another train.output_dir)"
        )
