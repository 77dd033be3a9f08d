"""The registry of task heads a model file can hold: name -> builder from a stored architecture.

A head module describes itself with ``architecture() -> dict`` (plain types) and is rebuilt by
``HEADS[name](architecture, clip_config)``; ``clip4vla.models.checkpoints`` uses this to load
fine-tuned models without knowing each head.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from clip4vla.models.captioner import build_caption_head
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.fusion import build_fusion_head

HeadBuilder = Callable[[Mapping[str, Any], CLIPConfig], nn.Module]

HEADS: dict[str, HeadBuilder] = {"fusion": build_fusion_head, "caption": build_caption_head}
