"""Model files as clip4vla 0.2 wrote them (``model.pt``): still read, so still tested."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clip4vla.files import save_checkpoint
from clip4vla.models.checkpoints import model_record


def legacy_model_pt(model: Any, path: Path, preprocessing: Any, **provenance: Any) -> Path:
    """The one-file export of clip4vla 0.2: format name and version, records, weights, provenance."""
    state = {"format": "clip4vla-model", "format_version": 1, **model_record(model, preprocessing),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **provenance}
    return save_checkpoint(path, state)
