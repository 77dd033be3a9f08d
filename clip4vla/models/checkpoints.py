"""Model files: our model folder, and reading every kind of file a model can start from.

``load_model(source)`` (``clip4vla.from_pretrained``) returns a ready :class:`CLIP4VLA` (eval mode,
``model.preprocessing`` set) from any of:

* **a model folder** (``<output_dir>/model/``, :mod:`clip4vla.models.model_folder`): ``model.safetensors``,
  ``config.json`` (the architecture, so nothing is inferred, and the preprocessing the weights were
  trained with, :class:`Preprocessing`) and the model card; the folder itself or its
  ``model.safetensors``;
* **a Hugging Face Hub id** ``org/name[@revision]``: the snapshot ``huggingface_hub`` keeps in its
  cache (:mod:`clip4vla.models.hub`), a model folder or an open_clip repository;
* **our older one-file export** ``model.pt`` (clip4vla 0.2): the same records in a torch file;
* **a trainer checkpoint** ``checkpoints/ckpt_<step>.pt`` or ``best.pt`` (same contents plus the
  optimiser state, which is ignored here), or an FSDP run's folder ``ckpt_<step>/`` (its shards' full
  weights, read in this process: :mod:`clip4vla.models.sharded_reader`);
* **an OpenAI CLIP file** (``ViT-B-32.pt``, TorchScript archive or state dict) of any ViT size and
  resolution: the audio encoder is initialised from the vision tower (paper "+Initial");
* **an open_clip checkpoint** of an OpenAI-architecture ViT (``open_clip_model.safetensors``,
  ``open_clip_pytorch_model.bin``, a ``create_model(...).state_dict()``, an open_clip training
  checkpoint, or an open_clip Hub folder): read like an OpenAI state dict, with the activation declared
  (:mod:`clip4vla.models.open_clip_format`: no state dict records it, and it is never guessed);
* **a released CLIP4VLA checkpoint** (keys ``clip.*``, ``audio.visual.*`` with
  ``control_embedding``; its token table has 3 extra rows, dropped here).

Every file is untrusted input: it is read without running pickled code
(``clip4vla.models.loading``), and a file that fits none of the kinds, or whose tensors do not fit
the architecture it declares, raises :class:`CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from clip4vla.models.card import CardFacts, model_card
from clip4vla.models.hub import locate_model
from clip4vla.models.audio import AUDIO_RESOLUTION, AudioEncoder
from clip4vla.models.clip import ACTIVATIONS, CLIP, CLIPConfig, clip_with_weights, foreign_tower
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.loading import (
    CheckpointError,
    check_state_dict,
    nonfinite_tensors,
    read_model_container,
    to_float32_state_dict,
)
from clip4vla.models.model_folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    is_model_folder,
    read_folder_config,
    read_folder_weights,
    write_model_folder,
)
from clip4vla.models.open_clip_format import (
    HUB_CONFIG_NAME,
    OPEN_CLIP_FILE_NAMES,
    HubConfig,
    archive_activation,
    check_backbone,
    check_named_shapes,
    name_activation,
    record_name,
    resolve_activation,
    stored_model_name,
)
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.models.sharded_reader import is_sharded_checkpoint, read_sharded_model, read_trainer_state

__all__ = [
    "MODEL_FORMAT",
    "ModelFile",
    "clip_config_from_record",
    "declare_activation",
    "export_model",
    "load_model",
    "model_card_facts",
    "model_architecture",
    "model_from_architecture",
    "read_model_file",
]

log = logging.getLogger(__name__)

MODEL_FORMAT = "clip4vla-model"
FORMAT_VERSION = 1
# The released code grew CLIP's 49408-row token table by 3 random rows (its padding ids).
OPENAI_VOCAB = 49408
_REF_EXTRA_VOCAB = 3


@dataclasses.dataclass
class ModelFile:
    """What a model file holds, whatever its kind."""

    kind: str  # "model folder", "export" (model.pt), "trainer checkpoint", "openai", "open_clip", "reference"
    architecture: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing | None
    # "openai" / "open_clip": the audio encoder is still to be made from the vision tower
    needs_audio: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "model file"  # the file's path, for messages

    def check_type_token(self, use_type_token: bool | None) -> None:
        """A config's ``model.audio_type_token`` must be the file's (None: take the file's)."""
        stored = self.architecture["audio_type_token"]
        if use_type_token is not None and stored is not None and use_type_token != stored:
            raise CheckpointError(
                f"{self.source}: the file's audio encoder is built with audio_type_token={stored}, "
                f"the config asks for {use_type_token}"
            )


# ------------------------------------------------------------------------------ architecture


def model_architecture(model: CLIP4VLA) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` before loading its weights (plain types only)."""
    return {
        "clip": dataclasses.asdict(model.clip.config),  # shapes and the activation
        "audio_type_token": model.audio.use_type_token,
        "audio_resolution": model.audio.visual.input_resolution,
        "heads": {name: head.architecture() for name, head in model.heads.items()},
    }


def clip_config_from_record(record: Any, source: str) -> CLIPConfig:
    """The stored CLIP shape, every number checked (a crafted record must not reach a constructor)."""
    if not isinstance(record, Mapping):
        raise CheckpointError(f"{source}: malformed architecture record: 'clip' is a {type(record).__name__}")
    record = dict(record)
    # files written before the activation was recorded were all built with QuickGELU
    activation = record.pop("activation", "quick_gelu")
    if activation is None:
        raise CheckpointError(f"{source}: the activation is not declared (declare_activation was not called)")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{source}: malformed architecture record: activation={activation!r} "
                              f"(expected one of {list(ACTIVATIONS)})")
    bad = [f"{k}={v!r}" for k, v in record.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise CheckpointError(f"{source}: malformed architecture record: {', '.join(bad)} (expected whole numbers >= 1)")
    try:
        return CLIPConfig(**record, activation=activation)
    except TypeError as err:
        raise CheckpointError(f"{source}: malformed architecture record ({err})") from err


def model_from_architecture(architecture: Mapping[str, Any], source: str = "model file") -> CLIP4VLA:
    """An uninitialised :class:`CLIP4VLA` (on the meta device) of the stored architecture."""
    if not isinstance(architecture, Mapping) or "clip" not in architecture or "audio_type_token" not in architecture:
        raise CheckpointError(f"{source}: malformed architecture record (needs 'clip' and 'audio_type_token')")
    clip_config = clip_config_from_record(architecture["clip"], source)
    use_type_token = architecture["audio_type_token"]
    heads = architecture.get("heads", {})
    audio_resolution = architecture.get("audio_resolution", clip_config.image_resolution)  # older files: the same
    if isinstance(audio_resolution, bool) or not isinstance(audio_resolution, int) or audio_resolution < 1:
        raise CheckpointError(f"{source}: malformed architecture record (audio_resolution={audio_resolution!r})")
    check_backbone(clip_config, audio_resolution, source)
    if not isinstance(use_type_token, bool) or not isinstance(heads, Mapping):
        raise CheckpointError(f"{source}: malformed architecture record (audio_type_token={use_type_token!r}, "
                              f"heads is a {type(heads).__name__})")
    try:
        with torch.device("meta"):
            audio_vision = dataclasses.replace(clip_config.vision, image_resolution=audio_resolution)
            model = CLIP4VLA(CLIP(clip_config), AudioEncoder(audio_vision, use_type_token=use_type_token))
            for name, head_arch in heads.items():
                model.attach_head(name, build_head(name, head_arch, clip_config, source))
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{source}: the architecture record builds no model ({type(err).__name__}: {err})") from err
    return model


def build_head(name: str, architecture: Mapping[str, Any], clip_config: CLIPConfig, source: str) -> nn.Module:
    """A task head (fusion, caption generator) from its stored architecture."""
    from clip4vla.models import heads as head_registry  # the heads import this module's callers

    builder = head_registry.HEADS.get(name)
    if builder is None:
        raise CheckpointError(f"{source}: unknown head {name!r} (known: {sorted(head_registry.HEADS)})")
    if not isinstance(architecture, Mapping):
        raise CheckpointError(f"{source}: head {name!r}: malformed record ({type(architecture).__name__})")
    bad = [f"{k}={v!r}" for k, v in architecture.items()
           if not isinstance(v, str) and (isinstance(v, bool) or not isinstance(v, int) or v < 1)]
    if bad:
        raise CheckpointError(f"{source}: head {name!r}: {', '.join(bad)} (expected whole numbers >= 1)")
    return builder(architecture, clip_config)


# ------------------------------------------------------------------------------ reading


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _preprocessing(value: Any, source: str) -> Preprocessing | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{source}: 'preprocessing' is a {type(value).__name__}, expected a mapping")
    try:
        return Preprocessing.from_dict(dict(value), source)
    except (TypeError, ValueError) as err:
        raise CheckpointError(str(err)) from err


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Classify and read any model file or folder, or a Hub id (module docstring); weights come
    back float32.

    Every weight must be finite: a NaN from a diverged run would otherwise give empty captions,
    zero metrics or a loss error blaming the first batch's videos, far from the file at fault.
    """
    path = locate_model(path)
    file = _read_model_file(path)
    file.source = str(path)
    bad = nonfinite_tensors(file.state_dict)
    if bad:
        raise CheckpointError(f"{path}: non-finite weights (NaN or inf) in {len(bad)} tensors, e.g. "
                              f"{', '.join(bad[:5])}: the file is damaged or from a diverged run; use an earlier checkpoint")
    return file


def _record_file(raw: dict[str, Any], kind: str, weights_key: str, source: str) -> ModelFile:
    """Our export or a trainer checkpoint: the stored architecture and preprocessing, checked."""
    architecture = raw.get("architecture")
    if not isinstance(architecture, Mapping):
        raise CheckpointError(f"{source}: a {kind} without a valid 'architecture' record "
                              f"(got {type(architecture).__name__}; written before clip4vla 0.2?)")
    return ModelFile(
        kind=kind,
        architecture=dict(architecture),
        state_dict=_tensors(raw.get(weights_key), source),
        preprocessing=_preprocessing(raw.get("preprocessing"), source),
        extra={k: raw[k] for k in ("task", "step", "config") if k in raw},
    )


def _folder_file(folder: Path) -> ModelFile:
    """A model folder (:mod:`clip4vla.models.model_folder`), every record checked."""
    config = read_folder_config(folder)
    dtype = config.get("dtype", "float32")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise CheckpointError(f"{folder / CONFIG_NAME}: \"dtype\" is {dtype!r}, expected float32, float16 or bfloat16")
    state = read_folder_weights(folder, dtype)
    source = str(folder / WEIGHTS_NAME)
    training = config.get("training") if isinstance(config.get("training"), Mapping) else {}
    return ModelFile(
        kind="model folder",
        architecture=dict(config["architecture"]),
        state_dict=to_float32_state_dict(state, source, owned=True, drop=()),
        preprocessing=_preprocessing(config["preprocessing"], str(folder / CONFIG_NAME)),
        extra={k: training[k] for k in ("task", "step") if k in training},
    )


def _read_model_file(path: Path) -> ModelFile:
    source = str(path)
    if is_sharded_checkpoint(path):  # an FSDP run's checkpoint folder: its records, the shards' full weights
        raw = {**read_trainer_state(path), "model": read_sharded_model(path)}
        return _record_file(raw, "trainer checkpoint", "model", source)
    if path.is_dir() or (path.name == WEIGHTS_NAME and is_model_folder(path.parent)):
        folder = path if path.is_dir() else path.parent
        ours = any((folder / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME))
        if is_model_folder(folder) or ours and not (folder / HUB_CONFIG_NAME).is_file():
            return _folder_file(folder)
        weights = next((folder / name for name in OPEN_CLIP_FILE_NAMES if (folder / name).is_file()), None)
        if weights is None:
            shown = ", ".join(sorted(p.name for p in folder.iterdir())[:8])
            raise CheckpointError(f"{folder}: a folder that is not a model: a clip4vla model folder has {CONFIG_NAME} "
                                  f"and {WEIGHTS_NAME}, an open_clip one {HUB_CONFIG_NAME} and its weights "
                                  f"(it holds: {shown or 'nothing'})")
        path, source = weights, str(weights)
    raw, container, classes = read_model_container(path)
    if raw.get("format") == MODEL_FORMAT:
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{source}: model file format version {version!r}; this clip4vla reads {FORMAT_VERSION}")
        return _record_file(raw, "export", "state_dict", source)
    if "model" in raw and "step" in raw:
        return _record_file(raw, "trainer checkpoint", "model", source)
    run_name = None
    if isinstance(raw.get("state_dict"), Mapping) and "epoch" in raw:  # open_clip's training checkpoint
        run_name, raw = record_name(raw), dict(raw["state_dict"])
    state = _strip_prefix(raw, "module.")  # saved from a DDP wrapper
    if any(k.startswith("audio.visual.") for k in state) and any(k.startswith("clip.") for k in state):
        return _reference_file(state, source)
    if "visual.conv1.weight" in state or foreign_tower(state):
        state = to_float32_state_dict(state, source, owned=True)
        # a hub folder's open_clip_config.json records what no tensor holds: the heads and the activation
        hub = HubConfig.beside(path) if container != "torchscript" else None
        # a ResNet, ConvNeXt, EVA... tower, or one that cannot be split into heads: an error here
        config = CLIPConfig.from_state_dict(state, source, *(hub.heads() if hub else ()))
        # OpenAI publishes TorchScript archives, whose module classes name the activation; a
        # .safetensors, a file under open_clip's hub names or its training checkpoint is open_clip's
        told_open_clip = (container == "safetensors" or path.name in OPEN_CLIP_FILE_NAMES
                          or run_name is not None or hub is not None)
        clip_record = dataclasses.asdict(config)
        if container == "torchscript":
            clip_record["activation"] = archive_activation(classes)
        else:
            clip_record["activation"] = hub.activation(config, source) if hub else None
        return ModelFile(
            kind="open_clip" if told_open_clip else "openai",
            architecture={"clip": clip_record, "audio_type_token": None, "heads": {}},
            state_dict=state,
            preprocessing=None,
            needs_audio=True,
            extra={"container": container, **({"open_clip_run_name": run_name} if run_name else {})},
        )
    shown = ", ".join(sorted(map(str, raw))[:8])
    raise CheckpointError(
        f"{source}: not a model file clip4vla knows (our model.pt export, a trainer checkpoint, an OpenAI or "
        f"open_clip ViT CLIP file or a released CLIP4VLA checkpoint); top-level keys: {shown}"
    )


def declare_activation(file: ModelFile, activation: str | None = None, open_clip_model: str | None = None) -> ModelFile:
    """Settle the file's activation and check the backbone, before anything is built or read.

    ``activation`` / ``open_clip_model``: the config's ``model.activation`` / ``model.open_clip_model``
    (:func:`clip4vla.models.open_clip_format.resolve_activation`). A file that records its activation
    keeps it (a contradicting declaration is an error); one that does not needs a declaration. The
    model name in an open_clip training checkpoint's run name is such a record. A declared or stored
    open_clip name must fit the file's tensors. Returns ``file``, its record completed.
    """
    record = file.architecture.get("clip")
    if not isinstance(record, Mapping):
        raise CheckpointError(f"{file.source}: malformed architecture record: 'clip' is a {type(record).__name__}")
    record = dict(record)
    recorded = record.get("activation", "quick_gelu") if "activation" in record or not file.needs_audio else None
    stored, unknown = stored_model_name(file.extra.get("open_clip_run_name"))
    if stored is not None and recorded is None:
        recorded = name_activation(stored, file.source)
    record["activation"] = resolve_activation(recorded, activation, open_clip_model, file.kind, file.source,
                                              recorded_by=f"its stored model name {stored}" if stored else "",
                                              unknown=unknown)
    file.architecture["clip"] = record
    config = clip_config_from_record(record, file.source)
    for name in dict.fromkeys(n for n in (open_clip_model, stored) if n is not None):
        check_named_shapes(config, name, file.source)
    check_backbone(config, file.architecture.get("audio_resolution", AUDIO_RESOLUTION if file.needs_audio
                                                 else config.image_resolution), file.source)
    if file.preprocessing is not None and file.preprocessing.image_size != config.image_resolution:
        raise CheckpointError(f"{file.source}: the preprocessing record says {file.preprocessing.image_size}-px frames, "
                              f"the vision tower takes {config.image_resolution} px")
    return file


def _tensors(state: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: weights are a {type(state).__name__}, expected a mapping of tensors")
    return to_float32_state_dict(dict(state), source, owned=True, drop=())


def _reference_file(state: dict[str, Any], source: str) -> ModelFile:
    """The released code's checkpoint -> our key names (``clip.*`` + ``audio.visual.*``)."""
    clip_state = {k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")}
    clip_state = to_float32_state_dict(clip_state, source, owned=True)
    tokens = clip_state.get("token_embedding.weight")
    if tokens is not None and tokens.shape[0] == OPENAI_VOCAB + _REF_EXTRA_VOCAB:
        clip_state["token_embedding.weight"] = tokens[:OPENAI_VOCAB].clone()
    config = CLIPConfig.from_state_dict(clip_state, source)
    audio = AudioEncoder.from_reference_state_dict(state, source)
    converted = {f"clip.{k}": v for k, v in clip_state.items()}
    converted.update({f"audio.{k}": v for k, v in audio.state_dict().items()})
    heads = _reference_fusion(state, config, converted, source) or _reference_caption(state, config, converted, source)
    used = ("clip.", "audio.", "cross.", "similarity_dense.", "cls.") if heads else ("clip.", "audio.")
    ignored = sorted({k.split(".")[0] for k in state if not k.startswith(used)})
    if ignored:
        log.warning("%s: task heads of the released code are not converted: %s", source, ", ".join(ignored))
    return ModelFile(
        kind="reference",
        architecture={"clip": dataclasses.asdict(config), "audio_type_token": audio.use_type_token, "heads": heads},
        state_dict=converted,
        preprocessing=None,
        extra={"ignored": ignored},
    )


def _reference_caption(state: dict[str, Any], config: CLIPConfig, converted: dict[str, torch.Tensor],
                       source: str) -> dict[str, Any]:
    """REF's captioning ``cross`` + ``cls.predictions`` -> our caption head (the decoder weight is
    CLIP's token embedding, tied; REF's 3 extra vocabulary rows of the bias are dropped). REF padded
    training captions to max_words (32 for MSR-VTT), which puts frames where ours are; a VATEX
    model (48) needs its ``heads.caption`` architecture's ``max_words`` set to 48 after loading."""
    if not any(k.startswith("cross.") for k in state) or "cls.predictions.bias" not in state:
        return {}
    cross = {k[len("cross."):]: v for k, v in state.items() if k.startswith("cross.")}
    tensors = {f"heads.caption.fusion.{k}": v for k, v in cross.items()}
    prefix = "cls.predictions.transform."
    tensors.update({f"heads.caption.transform.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)})
    tensors["heads.caption.bias"] = state["cls.predictions.bias"][:OPENAI_VOCAB]
    converted.update(to_float32_state_dict(tensors, source, owned=False, drop=()))
    layers = len({k.split(".")[2] for k in cross if k.startswith("transformer.resblocks.")})
    return {"caption": {"layers": layers, "width": config.embed_dim, "heads": max(1, config.embed_dim // 64),
                        "max_words": 32, "max_positions": cross["positional_embedding"].shape[0],
                        "vocab_size": OPENAI_VOCAB}}


def _reference_fusion(state: dict[str, Any], config: CLIPConfig, converted: dict[str, torch.Tensor],
                      source: str) -> dict[str, Any]:
    """REF's retrieval ``cross`` module (+ ``similarity_dense``: L2L; without it: G2L) -> our fusion head.

    Its parameter names are ours under ``heads.fusion.fusion.`` (the module was written to match);
    a captioning checkpoint (``cls.*`` beside ``cross.*``) keeps its cross module for the caption head.
    """
    cross = {k[len("cross."):]: v for k, v in state.items() if k.startswith("cross.")}
    if not cross or any(k.startswith("cls.") for k in state):
        return {}
    mode = "l2l" if "similarity_dense.weight" in state else "g2l"
    layers = len({k.split(".")[2] for k in cross if k.startswith("transformer.resblocks.")})
    positions = cross["positional_embedding"].shape[0] if "positional_embedding" in cross else config.context_length
    tensors = {f"heads.fusion.fusion.{k}": v for k, v in cross.items()}
    if mode == "l2l":
        tensors.update({f"heads.fusion.{k}": state[k] for k in ("similarity_dense.weight", "similarity_dense.bias") if k in state})
    converted.update(to_float32_state_dict(tensors, source, owned=False, drop=()))
    return {"fusion": {"mode": mode, "layers": layers, "width": config.embed_dim,
                       "heads": max(1, config.embed_dim // 64), "max_positions": positions}}


def model_from_file(file: ModelFile, source: str, audio_init: str = "vision", use_type_token: bool | None = None) -> CLIP4VLA:
    """Build the model a :class:`ModelFile` describes and load its weights (nothing loads partially)."""
    if file.needs_audio:
        if file.architecture["clip"].get("activation") is None:
            declare_activation(file)  # raises: the file records no activation and none was declared
        # the record, not the tensors, gives the heads (open_clip_config.json may have recorded them)
        config = clip_config_from_record(file.architecture["clip"], source)
        check_backbone(config, AUDIO_RESOLUTION, source)
        clip = clip_with_weights(config, dict(file.state_dict), source)
        model = CLIP4VLA.from_clip(clip, audio_init, True if use_type_token is None else use_type_token)
    else:
        file.check_type_token(use_type_token)
        model = model_from_architecture(file.architecture, source)
        check_state_dict(file.state_dict, model.state_dict(), source)
        # a plain dict: load_state_dict(assign=True) marks a state dict's own ``_metadata`` for
        # assignment, and a later ordinary load of the same dict (a resume restoring its
        # checkpoint) would then swap the parameters out from under the optimiser
        model.load_state_dict(dict(file.state_dict), strict=True, assign=True)
    # frames at the vision tower's resolution; files without a record get the paper's other defaults
    resolution = model.clip.config.image_resolution
    preprocessing = file.preprocessing or Preprocessing(image_size=resolution)
    if preprocessing.image_size != resolution:
        raise CheckpointError(f"{source}: the preprocessing record says {preprocessing.image_size}-px frames, "
                              f"the vision tower takes {resolution} px")
    model.preprocessing = preprocessing
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", activation: str | None = None,
               open_clip_model: str | None = None) -> CLIP4VLA:
    """A ready :class:`CLIP4VLA` in eval mode from any model file (module docstring).

    ``model.preprocessing`` says how to turn media into its inputs (the defaults of the paper, at
    the vision tower's resolution, for OpenAI, open_clip and released files, which do not record it).
    ``activation`` (``"quick_gelu"`` / ``"gelu"``) or ``open_clip_model`` (e.g. ``"ViT-B-16"``) must be
    given for a file that does not record its activation (a .safetensors or plain state dict).
    """
    file = declare_activation(read_model_file(path), activation, open_clip_model)
    model = model_from_file(file, str(path))
    return model.to(device).eval()


# ------------------------------------------------------------------------------ writing


def model_record(model: CLIP4VLA, preprocessing: Preprocessing) -> dict[str, Any]:
    """The architecture and preprocessing records that every model-holding file carries."""
    return {"architecture": model_architecture(model), "preprocessing": preprocessing.to_dict()}


def model_card_facts(model: CLIP4VLA, preprocessing: Preprocessing, name: str, **facts: Any) -> CardFacts:
    """The card's facts about ``model`` itself (architecture, preprocessing) plus what the caller knows."""
    return CardFacts(name=name, architecture=model_architecture(model), preprocessing=preprocessing.to_dict(), **facts)


def export_model(model: CLIP4VLA, folder: str | os.PathLike, preprocessing: Preprocessing,
                 card: CardFacts | None = None, extra: Callable[[Path], None] | None = None, **training: Any) -> Path:
    """Write the model folder (:mod:`clip4vla.models.model_folder`) atomically: weights, the
    architecture and preprocessing records, and the model card.

    ``training`` (task name, step, which weights) goes into ``config.json`` for the record (plain
    JSON types); ``card`` holds what the card says beyond the model itself (default: a card with
    the model's own facts, named after the folder); ``extra(folder)`` writes more files into the
    folder before it takes its name (the ONNX encoders of ``scripts/export_model.py --onnx``).
    """
    folder = Path(folder)
    record = {
        "clip4vla_version": _version(),
        **model_record(model, preprocessing),
        "dtype": "float32",
        "training": {k: v for k, v in training.items() if isinstance(v, (str, int, float, bool, type(None)))},
    }
    if card is None:
        card = model_card_facts(model, preprocessing, folder.name, task=training.get("task"), step=training.get("step"),
                                weights=training.get("weights"))
    state = {k: v.detach().to(torch.float32) if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    return write_model_folder(folder, state, record, model_card(card), extra)


def _version() -> str:
    from clip4vla import __version__

    return __version__
