"""Missing audio: silent clips paired with the audio of the nearest training clip (paper §4.2)."""

from __future__ import annotations

import json

import pytest
import torch

from clip4vla.config import RetrievalConfig, load_config
from clip4vla.data.audio_pairs import apply_audio_pairs, read_audio_pairs, write_audio_pairs
from clip4vla.data.corpora import read_split
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.data.pairing import nearest_audio_donors
from clip4vla.models.preprocessing import Preprocessing


def config_for(root):
    return load_config(RetrievalConfig, None, [f"data.synthetic.root={root}", "data.synthetic.clips=24"])


def test_every_silent_clip_gets_a_training_clip_with_audio(synthetic_root, micro_export):
    from clip4vla import load_model

    config = config_for(synthetic_root)
    pairs, stats = nearest_audio_donors(load_model(micro_export), config.data)
    meta = {v["video_id"]: v for v in json.loads((synthetic_root / "MSRVTT_data.json").read_text())["videos"]}
    silent = {vid for vid, v in meta.items() if not v["has_audio"]}
    assert set(pairs) == silent and stats["silent"] == len(silent) > 0
    for vid, pair in pairs.items():
        donor = meta[pair["donor"]]
        assert donor["has_audio"] and donor["split"] == "train" and -1.0 <= pair["cosine"] <= 1.0


def test_paired_records_load_the_donors_audio(synthetic_root, tmp_path):
    config = config_for(synthetic_root)
    splits = {s: read_split(config.data, "synthetic", s, "retrieval") for s in ("train", "val", "test")}
    meta = {v["video_id"]: v for v in json.loads((synthetic_root / "MSRVTT_data.json").read_text())["videos"]}
    silent = next(r.video_id for r in splits["test"] if not meta[r.video_id]["has_audio"])
    donor = next(r.video_id for r in splits["train"] if meta[r.video_id]["has_audio"])
    path = write_audio_pairs(tmp_path / "pairs.json", {silent: {"donor": donor, "cosine": 0.9}}, corpus="synthetic")
    assert apply_audio_pairs(list(splits.values()), splits["train"], read_audio_pairs(path), "test") == 1
    record = next(r for r in splits["test"] if r.video_id == silent)
    assert record.audio_from == donor
    options = SampleOptions(inputs=Preprocessing(max_frames=2, max_segments=2))
    sample = TriModalDataset([record], options)[0]
    donor_sample = TriModalDataset([next(r for r in splits["train"] if r.video_id == donor)], options)[0]
    assert sample["valid"] and sample["audio_mask"].any()
    assert torch.equal(sample["audio"], donor_sample["audio"])  # the donor's audio, the clip's own frames
    assert not torch.equal(sample["frames"], donor_sample["frames"])


def test_bad_pairing_files_are_clear_errors(synthetic_root, tmp_path):
    config = config_for(synthetic_root)
    splits = [read_split(config.data, "synthetic", s, "retrieval") for s in ("train", "val", "test")]
    train_id, test_id = splits[0][0].video_id, splits[2][0].video_id
    bad = write_audio_pairs(tmp_path / "unknown.json", {"no_such_video": {"donor": train_id}})
    with pytest.raises(ValueError, match="names 1 videos that are in none of the splits.*no_such_video"):
        apply_audio_pairs(splits, splits[0], read_audio_pairs(bad), "pairs")
    bad = write_audio_pairs(tmp_path / "donor.json", {train_id: {"donor": test_id}})
    with pytest.raises(ValueError, match="donors that are not training clips"):
        apply_audio_pairs(splits, splits[0], read_audio_pairs(bad), "pairs")
    (tmp_path / "other.json").write_text('{"pairs": []}')
    with pytest.raises(ValueError, match="not an audio-pairs file"):
        read_audio_pairs(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="pair_missing_audio.py"):
        read_audio_pairs(tmp_path / "missing.json")
