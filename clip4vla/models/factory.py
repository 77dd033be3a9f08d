"""Build the tri-encoder from a ``ModelConfig``: from a model file (``init_from``) or a named shape."""

from __future__ import annotations

from clip4vla.config import ModelConfig
from clip4vla.models.checkpoints import model_from_file, read_model_file
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.loading import CheckpointError


def build_model(config: ModelConfig) -> CLIP4VLA:
    """The one way scripts and the trainer construct a model (in train mode).

    With ``init_from`` every weight the file has is used (any kind of model file,
    ``clip4vla.models.checkpoints``); an OpenAI CLIP file gets its audio encoder from the vision
    tower (paper) or random (``audio_init: scratch``). The file decides the architecture:
    ``arch`` and ``audio_type_token``, when they disagree with it, are an error naming both, so a
    run never silently trains another model than the config says. Without ``init_from``, ``arch``
    (default ``tiny``) is built with random weights (the synthetic quick start).
    """
    if config.init_from:
        source = config.init_from
        file = read_model_file(source)
        stored = CLIPConfig(**file.architecture["clip"])
        if config.arch is not None and CLIPConfig.named(config.arch) != stored:
            raise CheckpointError(
                f"{source}: model.arch={config.arch} but the file holds a {stored.name() or 'custom'} model "
                f"({stored}); set model.arch to null (take the file's) or to the file's architecture"
            )
        if config.audio_init == "scratch" and not file.needs_audio:
            raise CheckpointError(
                f"{source}: model.audio_init=scratch, but this {file.kind} already has a trained audio encoder"
            )
        model = model_from_file(file, source, audio_init=config.audio_init, use_type_token=config.audio_type_token)
        model.train()
    else:
        clip_config = CLIPConfig.named(config.arch or "tiny")
        model = CLIP4VLA.from_config(clip_config, audio_init=config.audio_init, use_type_token=config.audio_type_token)
    model.freeze_clip(not config.train_clip)
    model.set_grad_checkpointing(config.grad_checkpointing)
    return model
