"""CLIP4VLA: CLIP extended with an audio encoder for vision-language-audio processing."""

__version__ = "0.1.0"
