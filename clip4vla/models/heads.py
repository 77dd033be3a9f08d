"""Task heads: the registry a model file's heads are rebuilt from, and attaching a task's head.

A head module describes itself with ``architecture() -> dict`` (plain types) and is rebuilt by
``HEADS[name](architecture, clip_config)``; ``clip4vla.models.checkpoints`` uses this to load
fine-tuned models without knowing each head.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping

from torch import nn

from clip4vla.config import ConfigError
from clip4vla.models.captioner import CaptionGenerator, build_caption_head
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.fusion import FusionHead, build_fusion_head

if TYPE_CHECKING:
    from clip4vla.models.clip4vla import CLIP4VLA

HeadBuilder = Callable[[Mapping[str, Any], CLIPConfig], nn.Module]

HEADS: dict[str, HeadBuilder] = {"fusion": build_fusion_head, "caption": build_caption_head}


def check_head_fits(name: str, stored: Mapping[str, Any], wanted: Any, config_keys: Mapping[str, str]) -> None:
    """A head ``init_from`` already holds is fine-tuned further only if it is the head the config
    describes; otherwise the config's values would be silently ignored (and recorded as if used).

    ``wanted``: the head config the run's settings would build; ``config_keys``: which config key
    sets each architecture field (the message names those).
    """
    wanted = dataclasses.asdict(wanted)
    differing = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
    if differing:
        said = "; ".join(f"{config_keys.get(k, k)}={new!r} but the head has {k}={old!r}"
                         for k, (old, new) in differing.items())
        raise ConfigError(f"model.init_from holds a {name} head of another architecture: {said}. Set "
                          f"{' and '.join(config_keys.get(k, k) for k in differing)} to the head's values to "
                          f"fine-tune it further")


def attach_head(model: CLIP4VLA, name: str, wanted: Any, build: Callable[[], nn.Module],
                config_keys: Mapping[str, str]) -> nn.Module:
    """The model's head ``name`` when it is the ``wanted`` architecture (fine-tuned further), else
    refused naming the keys; a model without one gets ``build()``."""
    if name in model.heads:
        head = model.heads[name]
        check_head_fits(name, head.architecture(), wanted, config_keys)
        return head
    head = build()
    model.attach_head(name, head)
    return head


def attach_fusion_head(model: CLIP4VLA, mode: str, layers: int) -> FusionHead:
    """Retrieval's fusion head of ``mode``: the model's own, or a new one from its CLIP text blocks."""
    return attach_head(model, "fusion", FusionHead.config_for(model.clip.config, mode, layers),
                       lambda: FusionHead.from_clip(model.clip, mode, layers),
                       {"mode": "retrieval.fusion", "layers": "retrieval.fusion_layers"})


def attach_caption_head(model: CLIP4VLA, max_words: int, layers: int) -> CaptionGenerator:
    """The caption generator: the model's own, or a new one from its CLIP text blocks."""
    return attach_head(model, "caption", CaptionGenerator.config_for(model.clip.config, max_words, layers),
                       lambda: CaptionGenerator.from_clip(model.clip, max_words, layers),
                       {"max_words": "data.max_words", "layers": "caption.fusion_layers"})
