"""CLIP4VLA: CLIP extended with an audio encoder for vision-language-audio processing.

    import clip4vla
    model = clip4vla.from_pretrained("runs/pretrain_synthetic/model")  # a model folder, a Hub id, any model file
    texts = clip4vla.embed_text(model, ["a red circle moves left"])    # [1, D] unit rows
    videos = clip4vla.embed_video(model, ["clip.mp4"])                  # vision
    sounds = clip4vla.embed_audio(model, ["clip.mp4"], audio_type="auto")  # its sound track
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

__all__ = ["__version__", "embed_audio", "embed_text", "embed_video", "from_pretrained", "load_model"]


def from_pretrained(source: Any, device: Any = "cpu", activation: Any = None, open_clip_model: Any = None) -> Any:
    """A ready :class:`clip4vla.models.CLIP4VLA` (eval mode) from any model source
    (``clip4vla.models.checkpoints``).

    ``source``: a model folder (what every run writes, ``runs/<name>/model``) or its
    ``model.safetensors``; a Hugging Face Hub id ``org/name[@revision]`` (``huggingface_hub``'s
    cache, read alone with ``HF_HUB_OFFLINE=1``); an older ``model.pt``, a trainer checkpoint, an
    OpenAI or open_clip CLIP (the audio encoder then starts from its vision tower) or a released
    CLIP4VLA checkpoint. ``model.preprocessing`` says how media become its inputs. A file that does
    not record its activation (an open_clip .safetensors, a plain state dict) needs
    ``activation="quick_gelu" | "gelu"`` or ``open_clip_model``.
    """
    from clip4vla.models.checkpoints import load_model as _load

    return _load(source, device, activation=activation, open_clip_model=open_clip_model)


load_model = from_pretrained  # the name clip4vla 0.2 used; the same function


def embed_text(model: Any, texts: Any) -> Any:
    """Unit text embeddings ``[N, D]`` (``clip4vla.embed``)."""
    from clip4vla.embed import embed_text as _embed

    return _embed(model, texts)


def embed_video(model: Any, videos: Any) -> Any:
    """Unit video embeddings ``[N, D]`` of video files (a list, or one path), deterministic (``clip4vla.embed``)."""
    from clip4vla.embed import embed_video as _embed

    return _embed(model, videos)


def embed_audio(model: Any, media: Any, audio_type: Any = "nb", strict: bool = True,
                return_audio_types: bool = False) -> Any:
    """Unit audio embeddings ``[N, D]`` of a list of files or one path; ``audio_type`` "vb" | "nb" | w |
    "auto"; ``return_audio_types`` also returns the token used per file (``clip4vla.embed``)."""
    from clip4vla.embed import embed_audio as _embed

    return _embed(model, media, audio_type=audio_type, strict=strict, return_audio_types=return_audio_types)
