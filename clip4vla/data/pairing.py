"""Compute the missing-audio pairing (``scripts/pair_missing_audio.py``; ``audio_pairs`` reads it).

One pass over every clip of the corpus: its global vision feature (frozen encoder) and whether it
has audio. Each silent clip gets the training clip with audio whose feature is nearest by cosine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from clip4vla.config import DataConfig
from clip4vla.data.corpora import corpus_splits, read_split
from clip4vla.data.readers.manifest import EmptySplitError
from clip4vla.data.dataset import SampleOptions, TriModalDataset, collate_samples
from clip4vla.data.synthetic import make_synthetic_dataset
from clip4vla.models.clip4vla import CLIP4VLA

__all__ = ["nearest_audio_donors"]

log = logging.getLogger(__name__)


@torch.no_grad()
def nearest_audio_donors(model: CLIP4VLA, data: DataConfig, batch_size: int = 32,
                         device: torch.device | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``({silent id: {"donor": training id, "cosine": c}}, counts)`` for ``data.corpus``."""
    corpus = data.corpus
    if corpus == "synthetic":
        make_synthetic_dataset(Path(data.synthetic.root), num_clips=data.synthetic.clips, seed=data.synthetic.seed)
    device = device or next(model.parameters()).device
    records, train_ids = {}, set()
    for split in corpus_splits(corpus):
        try:
            split_records = read_split(data, corpus, split, "retrieval")
        except (FileNotFoundError, EmptySplitError):
            continue  # a split the user does not have
        for r in split_records:
            records.setdefault(r.video_id, r)
            if split == "train" and r.start is None and r.end is None:
                train_ids.add(r.video_id)  # a window of a longer file cannot lend its audio (audio_pairs refuses it)
    options = SampleOptions.for_inference(model.preprocessing, data)
    dataset = TriModalDataset(list(records.values()), options)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples,
                                         num_workers=data.num_workers)
    ids, features, has_audio, readable = [], [], [], []
    for batch in tqdm(loader, desc="vision features", unit="batch"):
        _, video = model.encode_video(batch["frames"].to(device), batch["frame_mask"].to(device))
        ids += batch["video_id"]
        features.append(video.float().cpu())
        has_audio.append(batch["audio_mask"].any(1))
        readable.append(batch["valid"] & batch["frame_mask"].any(1))
    features, has_audio, readable = torch.cat(features), torch.cat(has_audio), torch.cat(readable)
    is_train = torch.tensor([i in train_ids for i in ids])
    donors = (is_train & has_audio & readable).nonzero().flatten()
    silent = (~has_audio & readable).nonzero().flatten()
    if len(donors) == 0:
        raise ValueError(f"no training clip of {corpus} has audio: nothing to pair with")
    cosine = features[silent] @ features[donors].T  # unit features
    best = cosine.max(dim=1)
    pairs = {ids[int(s)]: {"donor": ids[int(donors[int(j)])], "cosine": round(float(c), 4)}
             for s, j, c in zip(silent, best.indices, best.values)}
    stats = {"clips": len(ids), "silent": len(silent), "donors": len(donors),
             "mean_cosine": float(best.values.mean()) if len(silent) else float("nan")}
    log.info("audio pairing: %s", stats)
    return pairs, stats
