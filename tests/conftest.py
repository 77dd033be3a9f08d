"""Shared by the end-to-end pre-training tests: one small synthetic set and the micro-run settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from clip4vla.data.synthetic import make_synthetic_dataset
from clip4vla.models.clip import CLIP, CLIPConfig

PRETRAIN_CLIPS = 24


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A 24-clip synthetic dataset, generated once per session; tests only read it."""
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_clips=PRETRAIN_CLIPS, seed=0, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def synthetic_300(tmp_path_factory) -> Path:
    """300 synthetic clips for the tests that check something is learned (retrieval, captioning)."""
    root = tmp_path_factory.mktemp("synthetic300")
    make_synthetic_dataset(root, num_clips=300, seed=0, workers=2, progress=False)
    return root


def micro_pretrain_settings(root: Path, out: Path) -> dict[str, object]:
    """Config overrides for a seconds-long run of the micro model on ``synthetic_root``."""
    return {
        "model.arch": "micro",
        "model.train_clip": True,
        "audio.max_segments": 3,
        "data.synthetic.root": str(root),
        "data.synthetic.clips": PRETRAIN_CLIPS,
        "data.max_frames": 4,
        "data.num_workers": 0,
        "train.output_dir": str(out),
        "train.log_every": 1,
        "train.checkpoint_every_steps": 1,
    }


@pytest.fixture(scope="session")
def micro_openai_clip(tmp_path_factory) -> Path:
    """An OpenAI-format CLIP state dict of the micro architecture (stands in for ViT-B-32.pt)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "micro-clip.pt"
    torch.save(CLIP(CLIPConfig.micro()).state_dict(), path)
    return path


def _micro_model_file(folder: Path, write: Any, name: str) -> Path:
    """The micro CLIP4VLA (random weights, seed 0) written by ``write(model, path, preprocessing, task=...)``."""
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.micro())
    return write(model, folder / name, Preprocessing(max_frames=2, max_segments=2), task="pretrain")


@pytest.fixture(scope="session")
def micro_export(tmp_path_factory) -> Path:
    """A micro CLIP4VLA model folder (random weights), as a pre-training run would export it."""
    from clip4vla.models.checkpoints import export_model

    return _micro_model_file(tmp_path_factory.mktemp("export"), export_model, "model")


@pytest.fixture(scope="session")
def micro_legacy(tmp_path_factory) -> Path:
    """The same micro model as clip4vla 0.2's one-file ``model.pt``."""
    from legacy_files import legacy_model_pt

    return _micro_model_file(tmp_path_factory.mktemp("legacy"), legacy_model_pt, "model.pt")
