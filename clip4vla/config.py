"""Configs are data: dataclasses loaded from YAML, with ``--set a.b=value`` overrides.

Every run is described by one dataclass tree. Loading is strict on purpose: a typo in a YAML
file or an override (``optim.lr_rate``) must fail before any work starts, with the list of keys
that would have been valid, instead of silently training with a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass schema."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelConfig:
    # OpenAI CLIP checkpoint (e.g. ViT-B-32.pt). None builds `arch` with random weights.
    clip_checkpoint: str | None = None
    arch: Literal["micro", "tiny", "vit_b_32", "vit_b_16"] = "tiny"
    # Paper Table 5 "+Initial": the audio ViT starts from the vision weights.
    audio_init: Literal["vision", "scratch"] = "vision"
    audio_type_token: bool = True
    # Paper: only the audio encoder trains (88 M parameters). REF trains all with lr * coef_lr.
    train_clip: bool = False
    grad_checkpointing: bool = False


@dataclasses.dataclass
class AudioConfig:
    frontend: Literal["kaldi", "reference"] = "kaldi"
    max_segments: int = 10
    selection: Literal["centre", "uniform"] = "centre"
    max_seconds: float = 60.0
    mask_mode: Literal["paper", "reference"] = "paper"


@dataclasses.dataclass
class DataConfig:
    # "synthetic" generates the built-in dataset under `root` on first use.
    dataset: Literal["synthetic", "msrvtt", "howto100m", "audioset", "howto_audioset"] = "synthetic"
    root: str = "data/synthetic"
    # Reader keyword arguments per corpus, e.g. {howto100m: {caption_path: ..., prepared_dir: ...},
    # audioset: {...}, val: {reader: msrvtt, annotation_dir: ..., split: test}} (see configs/).
    reader_args: dict = dataclasses.field(default_factory=dict)
    # howto_audioset: per-corpus share of an epoch (e.g. [0.5, 0.5]); None = in proportion to size.
    mixture_weights: tuple | None = None
    media: Literal["raw", "prepared"] = "raw"
    max_frames: int = 12
    frame_sampling: Literal["uniform", "head", "tail"] = "uniform"
    frame_order: Literal["normal", "reversed", "shuffled"] = "normal"
    max_words: int = 32
    num_workers: int = 2
    # Keep decoded frames/spectrograms in memory across epochs (small sets, num_workers 0).
    cache_decoded: bool = False
    synthetic_clips: int = 300
    synthetic_seed: int = 0


@dataclasses.dataclass
class LossConfig:
    intra_modal: bool = True
    learnable_scale: bool = False
    # None: fixed 100 (REF), or CLIP's 1/0.07 when learnable.
    init_scale: float | None = None
    ref_extras: bool = False
    # Also train text<->video (not in the paper, whose CLIP towers come aligned): for towers
    # trained from scratch, e.g. the synthetic quick start without a CLIP checkpoint.
    text_video: bool = False


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-7
    coef_lr: float = 1.0
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    warmup: float = 0.1
    grad_clip: float = 1.0


@dataclasses.dataclass
class TrainConfig:
    output_dir: str = "runs/pretrain"
    epochs: int = 10
    # Global batch per optimiser step is batch_size * accum_steps (all of it serves as negatives).
    batch_size: int = 256
    accum_steps: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    log_every: int = 10
    eval_every_epochs: int = 1
    checkpoint_every_steps: int = 0  # 0: once per epoch
    keep_last: int = 3
    max_steps: int = 0  # 0: run all epochs
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclasses.dataclass
class PretrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert one YAML value against a field annotation (the few types configs use)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {annotation.__name__}, got {value!r}")
        return _build(annotation, value, where)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-7" (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _build(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys"
            f"{' in ' + where if where else ''}: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _set_path(tree: dict, cls: type, dotted: str, value: Any) -> None:
    """Insert ``value`` at ``a.b.c`` in a nested dict, validating each key against the schema."""
    keys = dotted.split(".")
    node, node_cls = tree, cls
    for depth, key in enumerate(keys):
        field_names = {f.name for f in dataclasses.fields(node_cls)}
        if key not in field_names:
            where = ".".join(keys[:depth]) or "<top level>"
            raise ConfigError(f"unknown config key {dotted!r}: {key!r} is not valid in {where}; valid keys: {sorted(field_names)}")
        hint = typing.get_type_hints(node_cls)[key]
        if depth == len(keys) - 1:
            node[key] = value
            return
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"config key {dotted!r}: {'.'.join(keys[:depth + 1])} is a value, not a section")
        node = node.setdefault(key, {})
        node_cls = hint


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` -> ``("optim.lr", 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip(), value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file plus ``key.path=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded or {}
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, cls, key, value)
    try:
        return _build(cls, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def config_to_dict(config: Any) -> dict:
    """Plain-Python dict of a config tree (tuples become lists so YAML stays readable)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config next to a run's outputs, so every result can be reproduced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    return path
