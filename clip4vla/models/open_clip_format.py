"""open_clip's checkpoints of OpenAI-architecture ViTs: their model names and the activation.

open_clip's ViT CLIPs (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ...) keep OpenAI's state-dict keys
and shapes, so the towers of :mod:`clip4vla.models.clip` load them as they are. What no state dict
records is the MLP activation: OpenAI trained with QuickGELU, open_clip's LAION-2B and DataComp
models with exact GELU, and open_clip marks the former with a ``-quickgelu`` model name. Loading
one as the other gives wrong features without any error, so the activation is declared (or read
from a file that records it) and never guessed; this module knows the names, and which shapes each
name promises, so a declaration that contradicts the file is caught at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from clip4vla.models.audio import AUDIO_RESOLUTION  # 224x224 segments whatever the image side
from clip4vla.models.clip import ACTIVATIONS, CLIPConfig
from clip4vla.models.loading import CheckpointError

__all__ = [
    "AUDIO_RESOLUTION",
    "OPEN_CLIP_FILE_NAMES",
    "OPEN_CLIP_VITS",
    "QUICKGELU_SUFFIX",
    "HubConfig",
    "check_backbone",
    "check_named_shapes",
    "experiment_model",
    "name_activation",
    "resolve_activation",
    "stored_model_name",
]

# The names open_clip publishes its weights under on the Hugging Face hub.
OPEN_CLIP_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
QUICKGELU_SUFFIX = "-quickgelu"
# The text context every CLIP here was trained with; our tokenizer and captions assume it.
CONTEXT_LENGTH = 77

# open_clip's OpenAI-architecture ViTs (64-wide heads, MLP ratio 4, CLS pooling, OpenAI's text
# tower): the shape each name promises. The activation is GELU unless the name ends in -quickgelu.
_B = dict(embed_dim=512, vision_layers=12, vision_width=768, vision_heads=12, context_length=CONTEXT_LENGTH,
          vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
_L = dict(embed_dim=768, vision_layers=24, vision_width=1024, vision_heads=16, context_length=CONTEXT_LENGTH,
          vocab_size=49408, transformer_width=768, transformer_heads=12, transformer_layers=12)
OPEN_CLIP_VITS: dict[str, dict[str, int]] = {
    "ViT-B-32": {**_B, "image_resolution": 224, "vision_patch_size": 32},
    "ViT-B-32-256": {**_B, "image_resolution": 256, "vision_patch_size": 32},
    "ViT-B-16": {**_B, "image_resolution": 224, "vision_patch_size": 16},
    "ViT-L-14": {**_L, "image_resolution": 224, "vision_patch_size": 14},
    "ViT-L-14-336": {**_L, "image_resolution": 336, "vision_patch_size": 14},
}


def _base_name(name: str, source: str) -> str:
    base = name[: -len(QUICKGELU_SUFFIX)] if name.endswith(QUICKGELU_SUFFIX) else name
    if base not in OPEN_CLIP_VITS:
        known = ", ".join(sorted(OPEN_CLIP_VITS))
        raise CheckpointError(
            f"{source}: open_clip model {name!r} is not one clip4vla loads; known: {known} (each also with "
            f"{QUICKGELU_SUFFIX}). ResNet, ConvNeXt, EVA, SigLIP, CoCa and ViT-H/g/bigG models do not load: their "
            "towers are not OpenAI's ViT layout"
        )
    return base


def name_activation(name: str, source: str = "model.open_clip_model") -> str:
    """The activation an open_clip model name implies: ``quick_gelu`` for ``*-quickgelu``, else ``gelu``."""
    _base_name(name, source)
    return "quick_gelu" if name.endswith(QUICKGELU_SUFFIX) else "gelu"


def check_named_shapes(config: CLIPConfig, name: str, source: str) -> None:
    """The file's tensors must have the shapes its declared open_clip model name promises."""
    promised = OPEN_CLIP_VITS[_base_name(name, source)]
    found = dataclasses.asdict(config)
    wrong = [f"{k} {found[k]} (the name says {v})" for k, v in promised.items() if found[k] != v]
    if wrong:
        raise CheckpointError(
            f"{source}: the file's tensors are not an open_clip {name}: {', '.join(wrong)}; set model.open_clip_model "
            "to the file's model name, or to null and declare model.activation"
        )


def resolve_activation(recorded: str | None, declared: str | None, open_clip_model: str | None, kind: str,
                       source: str, recorded_by: str = "", unknown: str = "") -> str:
    """The activation to build a file's towers with, or a :class:`CheckpointError` naming the choice.

    ``recorded``: what the file itself says (our exports, trainer checkpoints, OpenAI's TorchScript
    archives, whose module classes name it, the model name in an open_clip training checkpoint), None
    when it cannot tell; ``recorded_by`` says where, ``unknown`` why it cannot (both for messages).
    ``declared`` / ``open_clip_model``: the config's ``model.activation`` and ``model.open_clip_model``.
    Every stated value must agree.
    """
    if declared is not None and declared not in ACTIVATIONS:
        raise CheckpointError(f"{source}: model.activation={declared!r}: choose one of {list(ACTIVATIONS)}")
    wanted = declared
    if open_clip_model is not None:
        implied = name_activation(open_clip_model, source)
        if declared is not None and declared != implied:
            raise CheckpointError(
                f"{source}: model.activation={declared} contradicts model.open_clip_model={open_clip_model}, which is "
                f"a {implied} model (open_clip names ending {QUICKGELU_SUFFIX} use quick_gelu, the others gelu)"
            )
        wanted = implied
    if recorded is not None:
        if wanted is not None and wanted != recorded:
            raise CheckpointError(
                f"{source}: this {kind} records activation {recorded}{f' ({recorded_by})' if recorded_by else ''}, "
                f"but the config declares {wanted}; drop model.activation / model.open_clip_model (the file's record "
                "decides) or use another file"
            )
        return recorded
    if wanted is not None:
        return wanted
    what = ("an open_clip file" if kind == "open_clip"
            else "a state dict with OpenAI CLIP keys (OpenAI's and open_clip's have the same keys and shapes)")
    raise CheckpointError(
        f"{source}: {what} does not record its activation{f' ({unknown})' if unknown else ''}, and clip4vla does "
        "not guess it: set "
        "model.activation: quick_gelu (OpenAI-trained weights, open_clip names ending -quickgelu) or gelu "
        "(open_clip's LAION / DataComp models such as ViT-B-32, ViT-B-16, ViT-L-14), or model.open_clip_model "
        "to the file's open_clip model name"
    )


def check_backbone(config: CLIPConfig, audio_resolution: int, source: str) -> None:
    """What a CLIP must be for clip4vla: refused at start-up, naming the file and the reason.

    The text tower must have 77 positions (the tokenizer's context; captions are cut to it), the image
    side a whole number of patches, and the audio encoder's 224x224 spectrogram images too.
    """
    if config.activation not in ACTIVATIONS:
        raise CheckpointError(f"{source}: activation {config.activation!r}: expected one of {list(ACTIVATIONS)}")
    if config.context_length != CONTEXT_LENGTH:
        raise CheckpointError(
            f"{source}: the text tower has {config.context_length} positions; clip4vla's tokenizer, captions and "
            f"fusion heads use CLIP's {CONTEXT_LENGTH}"
        )
    patch = config.vision_patch_size
    if config.image_resolution % patch:
        raise CheckpointError(
            f"{source}: image resolution {config.image_resolution} is not a whole number of {patch}-px patches"
        )
    if audio_resolution != AUDIO_RESOLUTION:
        raise CheckpointError(
            f"{source}: the audio encoder reads {audio_resolution}x{audio_resolution} images; clip4vla's front-end "
            f"cuts {AUDIO_RESOLUTION}x{AUDIO_RESOLUTION} spectrogram segments"
        )
    if AUDIO_RESOLUTION % patch:
        raise CheckpointError(
            f"{source}: the audio encoder's {AUDIO_RESOLUTION}x{AUDIO_RESOLUTION} spectrogram images are not a whole "
            f"number of the vision tower's {patch}-px patches"
        )


def archive_activation(classes: dict[str, str]) -> str | None:
    """The activation a TorchScript archive's module classes name (``*.mlp.gelu``), None if unclear."""
    found = {cls for where, cls in classes.items() if where.endswith(".mlp.gelu")}
    return {frozenset({"QuickGELU"}): "quick_gelu", frozenset({"GELU"}): "gelu"}.get(frozenset(found))


def record_name(raw: Any) -> str | None:
    """The run name an open_clip training checkpoint stores (``{"epoch", "name", "state_dict"}``)."""
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else None


# open_clip's trainer names a run '<date>-model_<model>-lr_<lr>-b_<batch>-j_<workers>-p_<precision>'
# (unless given --name) and stores that name, not the model's, in every epoch_N.pt. The lr may hold
# dashes (1e-05), the model name too (ViT-B-32-quickgelu): it ends at the first '-lr_'.
_EXPERIMENT_NAME = re.compile(r"\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}-model_(?P<model>.+?)-lr_.+-b_\d+-j_\d+-p_\w+")


def experiment_model(name: str) -> str | None:
    """The model name inside open_clip's default run name; None for any other name."""
    match = _EXPERIMENT_NAME.fullmatch(name)
    return match["model"] if match else None


def stored_model_name(run_name: str | None) -> tuple[str | None, str]:
    """``(model name, "")`` when an open_clip training checkpoint's stored run name tells one of
    :data:`OPEN_CLIP_VITS` (either activation), else ``(None, why it does not)``."""
    if run_name is None:
        return None, ""
    model = experiment_model(run_name)
    if model is None:
        return None, (f"its stored run name {run_name!r} is not open_clip's default experiment name "
                      "(<date>-model_<model>-lr_...), so its model cannot be told")
    base = model[: -len(QUICKGELU_SUFFIX)] if model.endswith(QUICKGELU_SUFFIX) else model
    if base not in OPEN_CLIP_VITS:
        return None, f"the stored run name's model {model} is not an open_clip model whose activation clip4vla knows"
    return model, ""


HUB_CONFIG_NAME = "open_clip_config.json"
# open_clip's defaults (CLIPVisionCfg, CLIPTextCfg) for what a model config may leave out.
_OPEN_CLIP_HEAD_WIDTH, _OPEN_CLIP_TEXT_HEADS = 64, 8
# open_clip options whose other values change what the towers compute, some without changing any
# tensor's name or shape: a config that sets one is refused rather than loaded as OpenAI's layout.
_OPENAI_LAYOUT = {
    "vision_cfg": {"mlp_ratio": 4.0, "pool_type": "tok", "final_ln_after_pool": False, "pos_embed_type": "learnable",
                   "act_kwargs": None, "norm_kwargs": None, "scaled_cosine_attn": False},
    "text_cfg": {"mlp_ratio": 4.0, "pool_type": "argmax", "final_ln_after_pool": False, "no_causal_mask": False,
                 "embed_cls": False, "proj_type": "linear", "act_kwargs": None, "norm_kwargs": None,
                 "scaled_cosine_attn": False},
}


@dataclasses.dataclass(frozen=True)
class HubConfig:
    """``open_clip_config.json`` beside a hub file: its ``model_cfg`` is open_clip's ``create_model``
    config, the record of what no tensor holds: the activation (``quick_gelu: true``; absent: GELU)
    and the heads (``vision_cfg.head_width``, ``text_cfg.heads``)."""

    path: Path
    vision: dict[str, Any]
    text: dict[str, Any]
    model_cfg: dict[str, Any]

    @classmethod
    def beside(cls, weights: Path) -> HubConfig | None:
        """The config next to ``weights`` (None without one), refused when it is not open_clip's or
        asks for towers other than OpenAI's layout."""
        path = weights.parent / HUB_CONFIG_NAME
        if not path.is_file():
            return None
        try:
            model_cfg = json.loads(path.read_text(encoding="utf-8"))["model_cfg"]
            vision, text = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: not an open_clip model config ({type(err).__name__}: {err})") from err
        for section, values in (("vision_cfg", vision), ("text_cfg", text)):
            for key, default in _OPENAI_LAYOUT[section].items():
                if key in values and values[key] != default and not (default is None and values[key] == {}):
                    raise CheckpointError(f"{path}: {section} {key}={values[key]!r}: clip4vla's towers are OpenAI's "
                                          f"layout ({key}={default!r}), so this model does not load")
        return cls(path, vision, text, dict(model_cfg))

    def heads(self) -> tuple[int, int]:
        """``(vision head width, text heads)``, open_clip's record of what no tensor holds
        (:meth:`CLIPConfig.from_state_dict` splits the towers by it)."""
        recorded = []
        for section, values, key, default in (("vision_cfg", self.vision, "head_width", _OPEN_CLIP_HEAD_WIDTH),
                                              ("text_cfg", self.text, "heads", _OPEN_CLIP_TEXT_HEADS)):
            value = values.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{self.path}: {section} {key}={value!r}: expected a whole number >= 1")
            recorded.append(value)
        return recorded[0], recorded[1]

    def activation(self, config: CLIPConfig, source: str) -> str:
        """The recorded activation, after checking that the model config describes the file's tensors.

        The image side is checked too: a config whose side is not a whole number of patches (open_clip
        floors the grid and drops the last pixels) cannot be matched by any frame size here.
        """
        side, patch = self.vision.get("image_size"), self.vision.get("patch_size")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (side, patch)):
            raise CheckpointError(f"{self.path}: vision_cfg image_size={side!r}, patch_size={patch!r}: "
                                  "only square images load")
        if side % patch:
            raise CheckpointError(f"{source}: {self.path.name} says {side}-px images, which are not a whole number of "
                                  f"{patch}-px patches")
        promised = {"image_resolution": side, "vision_patch_size": patch, "vision_width": self.vision.get("width"),
                    "vision_layers": self.vision.get("layers"), "embed_dim": self.model_cfg.get("embed_dim"),
                    "transformer_width": self.text.get("width"), "transformer_layers": self.text.get("layers"),
                    "context_length": self.text.get("context_length", CONTEXT_LENGTH)}
        found = dataclasses.asdict(config)
        wrong = [f"{k} {found[k]} ({self.path.name} says {v})" for k, v in promised.items()
                 if v is not None and found[k] != v]
        if wrong:
            raise CheckpointError(f"{source}: the tensors do not fit {self.path}: {', '.join(wrong)}")
        return "quick_gelu" if self.model_cfg.get("quick_gelu") else "gelu"
