"""CLIP4VLA: CLIP extended with an audio encoder for vision-language-audio processing.

    import clip4vla
    model = clip4vla.load_model("runs/pretrain_synthetic/model.pt")   # any model file, eval mode
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

__all__ = ["__version__", "load_model"]


def load_model(path: Any, device: Any = "cpu") -> Any:
    """A ready :class:`clip4vla.models.CLIP4VLA` from any model file (see ``clip4vla.models.checkpoints``).

    Reads our ``model.pt`` export, a trainer checkpoint, an OpenAI CLIP file (the audio encoder
    then starts from its vision tower) or a released CLIP4VLA checkpoint; ``model.preprocessing``
    says how media become its inputs.
    """
    from clip4vla.models.checkpoints import load_model as _load

    return _load(path, device)
