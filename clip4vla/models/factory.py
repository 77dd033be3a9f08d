"""Build the tri-encoder from a ``ModelConfig``: from a model file (``init_from``) or a named shape."""

from __future__ import annotations

import dataclasses

from clip4vla.config import ModelConfig
from clip4vla.models.checkpoints import (
    ModelFile,
    clip_config_from_record,
    declare_activation,
    model_from_file,
    read_model_file,
)
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.loading import CheckpointError
from clip4vla.models.preprocessing import Preprocessing


def read_init_file(config: ModelConfig) -> ModelFile:
    """Read ``model.init_from`` and check it against the config, without building anything.

    The trainer calls this before any data work, so a corrupt, foreign or mismatched file is one
    :class:`CheckpointError` naming it at start-up, not a failure after every clip was decoded.
    The file decides the architecture: ``arch`` and ``audio_type_token``, when they disagree with
    it, are an error naming both, so a run never silently trains another model than the config says.
    So is a file whose activation is neither recorded nor declared (``model.activation`` /
    ``model.open_clip_model``), or a backbone clip4vla cannot use (context length, patch grid).
    """
    if not config.init_from:
        raise ValueError("model.init_from is not set")
    source = config.init_from
    file = declare_activation(read_model_file(source), config.activation, config.open_clip_model)
    stored = clip_config_from_record(file.architecture.get("clip"), source)
    if config.arch is not None and CLIPConfig.named(config.arch) != stored.shape():
        raise CheckpointError(
            f"{source}: model.arch={config.arch} but the file holds a {stored.name() or 'custom'} model "
            f"({stored}); set model.arch to null (take the file's) or to the file's architecture"
        )
    if config.audio_init == "scratch" and not file.needs_audio:
        raise CheckpointError(
            f"{source}: model.audio_init=scratch, but this {file.kind} already has a trained audio encoder"
        )
    file.check_type_token(config.audio_type_token)
    return file


def input_image_size(config: ModelConfig, file: ModelFile | None) -> int:
    """The side of the frames the model of ``config`` (started from ``file``) takes: the vision
    tower's resolution. Known before any data is read, so the data pipeline makes frames of that
    size (a 336-px ViT-L/14 gets 336-px frames) instead of failing at the first step."""
    if file is not None:
        return clip_config_from_record(file.architecture.get("clip"), file.source).image_resolution
    if config.init_from:
        return input_image_size(config, read_init_file(config))
    return CLIPConfig.named(config.arch or "tiny").image_resolution


def build_model(config: ModelConfig, file: ModelFile | None = None) -> CLIP4VLA:
    """The one way scripts and the trainer construct a model (in train mode).

    ``file``: the weights to start from, already read (``read_init_file``, or on resume the
    checkpoint's own record, so a resume never needs ``init_from``); None reads ``init_from``
    when set. Every weight the file has is used (any kind of model file,
    ``clip4vla.models.checkpoints``); an OpenAI CLIP file gets its audio encoder from the vision
    tower (paper) or random (``audio_init: scratch``). Without a file, ``arch`` (default ``tiny``)
    is built with random weights (the synthetic quick start).
    """
    if file is None and config.init_from:
        file = read_init_file(config)
    if file is not None:
        model = model_from_file(file, file.source, audio_init=config.audio_init, use_type_token=config.audio_type_token)
        model.train()
    else:
        clip_config = dataclasses.replace(CLIPConfig.named(config.arch or "tiny"),
                                          activation=config.activation or "quick_gelu")
        model = CLIP4VLA.from_config(clip_config, audio_init=config.audio_init, use_type_token=config.audio_type_token)
    model.freeze_clip(not config.train_clip)
    model.set_grad_checkpointing(config.grad_checkpointing)
    return model


def inputs_for_model(inputs: Preprocessing, config: ModelConfig, file: ModelFile | None) -> Preprocessing:
    """``inputs`` with frames at the side the model takes (:func:`input_image_size`); a task calls this
    with the file its model starts from, before any data is read."""
    return dataclasses.replace(inputs, image_size=input_image_size(config, file))
