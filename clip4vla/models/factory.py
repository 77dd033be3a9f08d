"""Build the tri-encoder from a ``ModelConfig``: an OpenAI checkpoint, or a named architecture."""

from __future__ import annotations

from clip4vla.config import ModelConfig
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA


def build_model(config: ModelConfig) -> CLIP4VLA:
    """The one way scripts and the trainer construct a model.

    With ``clip_checkpoint`` the text/vision towers come from OpenAI's weights and the audio
    encoder is initialised from the vision tower (paper) or randomly (``audio_init: scratch``).
    Without it, ``arch`` is built with random weights (the synthetic quick start).
    """
    if config.clip_checkpoint:
        model = CLIP4VLA.from_openai(
            config.clip_checkpoint, audio_init=config.audio_init, use_type_token=config.audio_type_token
        )
    else:
        clip_config = getattr(CLIPConfig, config.arch)()
        model = CLIP4VLA.from_config(clip_config, audio_init=config.audio_init, use_type_token=config.audio_type_token)
    model.freeze_clip(not config.train_clip)
    model.set_grad_checkpointing(config.grad_checkpointing)
    return model
