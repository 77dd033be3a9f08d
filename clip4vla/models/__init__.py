"""Models: CLIP towers and OpenAI checkpoint loading, the audio encoder, the tri-encoder."""

from clip4vla.models.audio import AudioEncoder
from clip4vla.models.clip import CLIP, CLIPConfig, TextTransformer, VisionTransformer, load_openai_clip
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.loading import CheckpointError
from clip4vla.models.pooling import masked_mean_normalised

__all__ = [
    "AudioEncoder",
    "CLIP",
    "CLIP4VLA",
    "CLIPConfig",
    "CheckpointError",
    "TextTransformer",
    "VisionTransformer",
    "load_openai_clip",
    "masked_mean_normalised",
]
