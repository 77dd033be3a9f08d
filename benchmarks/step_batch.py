"""A collated pre-training batch of random inputs, as the data loader hands it over: what the step
benchmarks feed ``Stepper.train_step`` (speed and memory do not depend on the values; every mask is
full, so every frame and segment is encoded)."""

from __future__ import annotations

import torch

WORDS = 32  # data.max_words of the pre-training configs


def random_pretrain_batch(batch: int, frames: int, segments: int, side: int = 224, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 49406, (batch, WORDS), generator=g)
    text[:, -1] = 49407  # EOT (the largest id: the text tower pools at argmax)
    return {
        "text": text,
        "frames": torch.randn(batch, frames, 3, side, side, generator=g),
        "frame_mask": torch.ones(batch, frames, dtype=torch.bool),
        "audio": torch.randn(batch, segments, 3, 224, 224, generator=g),
        "audio_mask": torch.ones(batch, segments, dtype=torch.bool),
        "audio_type": torch.randint(0, 2, (batch,), generator=g),
        "masked_audio": torch.randn(batch, segments, 3, 224, 224, generator=g),
        "valid": torch.ones(batch, dtype=torch.bool),
        "has_text": torch.ones(batch, dtype=torch.bool),  # every clip captioned (manifests may have media-only rows)
        "video_id": [f"random{i}" for i in range(batch)],
    }
