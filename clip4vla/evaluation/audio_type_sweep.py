"""Figure 4: zero-shot text -> audio retrieval as a function of the [VB]/[NB] mixing ratio w."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from clip4vla.data.dataset import TriModalDataset
from clip4vla.evaluation.encode import encode_batches
from clip4vla.evaluation.retrieval import retrieval_metrics
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.text import tokenize

__all__ = ["plot_sweep", "sweep_audio_type"]


@torch.no_grad()
def sweep_audio_type(model: CLIP4VLA, dataset: TriModalDataset, ratios: Sequence[float],
                     batch_size: int = 32) -> list[dict[str, Any]]:
    """One row per ratio w: R@1/5/10, MedR, MeanR of every caption against the clips' audio.

    Clips without audio (or unreadable) take no part. The spectrograms are decoded once; only
    the audio encoder runs again for each ratio.
    """
    device = next(model.parameters()).device

    def audio_clips(batch: dict[str, Any]) -> dict[str, Any]:
        keep = batch["valid"] & batch["audio_mask"].any(1)
        return {"segments": batch["audio"][keep], "masks": batch["audio_mask"][keep],
                "kept": batch["index"][keep].tolist()}

    clips = encode_batches(dataset, batch_size, audio_clips)
    if not clips.get("kept"):
        raise ValueError("no clip of the split has audio")
    segments, masks, kept = clips["segments"], clips["masks"], clips["kept"]
    captions = [(i, c) for i, index in enumerate(kept) for c in dataset.records[index].captions]
    tokens = tokenize([c for _, c in captions], context_length=dataset.options.inputs.max_words, truncate=True)
    text = torch.cat([model.encode_text(tokens[i:i + batch_size].to(device)) for i in range(0, len(tokens), batch_size)])
    text = F.normalize(text.float(), dim=-1)
    mapping = torch.tensor([i for i, _ in captions])
    rows = []
    for w in ratios:
        audio = torch.cat([
            model.encode_audio(segments[i:i + batch_size].to(device), masks[i:i + batch_size].to(device), float(w))[1]
            for i in range(0, len(segments), batch_size)
        ])
        m = retrieval_metrics(text @ audio.float().T, mapping)
        rows.append({"w": float(w), **{k: float(m[k]) for k in ("R1", "R5", "R10", "MedR", "MeanR")},
                     "n_clips": len(kept), "n_texts": len(captions)})
    return rows


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    w = [r["w"] for r in rows]
    for key in ("R1", "R5", "R10"):
        ax.plot(w, [r[key] for r in rows], marker="o", label=f"R@{key[1:]}")
    ax.set_xlabel("mixing ratio w: (1 - w)·[VB] + w·[NB]")
    ax.set_ylabel("text -> audio recall (%)")
    ax.set_title(f"audio type sweep {title}".strip())
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
