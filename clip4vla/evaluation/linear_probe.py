"""Linear probes and zero-shot classification on frozen features: ESC-50 and UCF101 (Table 6).

Features are extracted once per model and cached (``clip4vla.extract``: resumable, unreadable files
listed), so trying another regularisation or mode costs seconds.

**Linear probe.** ``LayerNorm + Linear`` on the masked mean of the per-segment audio features
(ESC-50, audio type [NB]) or of the per-frame vision features concatenated with the audio ones
(UCF101; zeros for a video without sound). It is fitted to convergence with full-batch L-BFGS on
cross-entropy plus an L2 penalty on the linear weight. The penalty is chosen on a stratified
slice of the *training* folds, then the probe is refitted on all of them and scored once on the
test fold. The released code instead reports the best epoch *on the test fold*, which flatters
every number.

Why not the shared training loop (``clip4vla.train.loop``): a probe is a convex-in-practice fit of a
few thousand parameters on a few thousand cached vectors that finishes in a second. The loop's
reasons to exist — data loaders, DDP, checkpoints, resume, schedules — do not arise; the one thing
that matters here, choosing the regularisation without touching the test fold, is this module.

**Zero-shot.** Each class name goes into a prompt ("the sound of a {}", "a video of {}"); a clip
takes the class whose prompt embedding is closest to its pooled audio (ESC-50) or video (UCF101;
``av``: the average of the video and audio similarities, as G2G retrieval scores) embedding.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip4vla.data.records import ClipRecord
from clip4vla.embed import embed_text
from clip4vla.extract import extract_features, model_identity, read_shards
from clip4vla.models.clip4vla import CLIP4VLA

__all__ = ["LabelledFeatures", "LinearProbe", "fit_probe", "labelled_features", "probe_accuracy",
           "zero_shot_predictions"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LabelledFeatures:
    """Frozen features of labelled clips, in record order (unreadable clips left out)."""

    ids: list[str]
    labels: torch.Tensor  # [N] class index
    video: torch.Tensor  # [N, D] masked mean of frame features (zeros for sound files)
    audio: torch.Tensor  # [N, D] masked mean of segment features (zeros without sound)
    has_audio: torch.Tensor  # [N] bool
    video_unit: torch.Tensor  # [N, D] pooled unit embeddings, for zero-shot
    audio_unit: torch.Tensor  # [N, D]
    skipped: list[str]

    def subset(self, ids: Sequence[str]) -> "LabelledFeatures":
        where = {i: n for n, i in enumerate(self.ids)}
        rows = torch.tensor([where[i] for i in ids if i in where], dtype=torch.long)
        pick = lambda t: t[rows]  # noqa: E731
        return LabelledFeatures([self.ids[r] for r in rows.tolist()], pick(self.labels), pick(self.video),
                                pick(self.audio), pick(self.has_audio), pick(self.video_unit), pick(self.audio_unit),
                                [i for i in ids if i not in where])

    def inputs(self, kind: str) -> torch.Tensor:
        """The probe's input: ``audio``, ``video`` or ``video+audio``."""
        parts = {"audio": [self.audio], "video": [self.video], "video+audio": [self.video, self.audio]}[kind]
        return torch.cat(parts, dim=1)


def _masked_mean(rows: torch.Tensor | None, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    if rows is None:
        return torch.zeros(dim)
    mask = mask.to(rows.dtype).reshape(-1)
    return (rows.reshape(-1, rows.shape[-1]) * mask[:, None]).sum(0) / mask.sum().clamp(min=1)


def labelled_features(model: CLIP4VLA, model_path: str | os.PathLike, records: Sequence[ClipRecord],
                      cache_dir: str | os.PathLike, audio_type: Any = "nb", progress: bool = True) -> LabelledFeatures:
    """Features of ``records`` (raw media), extracted into ``cache_dir/<model hash>/`` once."""
    media, seen = [], set()
    for r in records:
        path = r.audio_path if r.video_path is None else r.video_path
        if path is None:
            raise ValueError(f"{r.video_id}: the probes read raw media files; point the corpus at its video/audio folder")
        if r.video_id not in seen:
            seen.add(r.video_id)
            media.append((r.video_id, Path(path)))
    identity = model_identity(model, model_path)
    out = Path(cache_dir) / identity["sha256"][:16]
    extract_features(model, media, out, identity, audio_type=audio_type, progress=progress)
    items = {item["id"]: item for item in read_shards(out)[0]}
    dim = model.clip.config.embed_dim
    kept = [r for r in records if r.video_id in items]
    rows = [items[r.video_id] for r in kept]
    unit = lambda t: torch.zeros(dim) if t is None else t  # noqa: E731
    return LabelledFeatures(
        ids=[r.video_id for r in kept],
        labels=torch.tensor([r.label for r in kept], dtype=torch.long),
        video=torch.stack([_masked_mean(i["frames"], i["frame_mask"], dim) for i in rows]) if rows else torch.zeros(0, dim),
        audio=torch.stack([_masked_mean(i["segments"], i["segment_mask"], dim) for i in rows]) if rows else torch.zeros(0, dim),
        has_audio=torch.tensor([i["audio"] is not None for i in rows], dtype=torch.bool),
        video_unit=torch.stack([unit(i["video"]) for i in rows]) if rows else torch.zeros(0, dim),
        audio_unit=torch.stack([unit(i["audio"]) for i in rows]) if rows else torch.zeros(0, dim),
        skipped=sorted({r.video_id for r in records if r.video_id not in items}),
    )


class LinearProbe(nn.Module):
    """``LayerNorm + Linear``: the normalisation makes one penalty grid fit every feature scale."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int, seed: int) -> LinearProbe:
    generator = torch.Generator().manual_seed(seed)
    probe = LinearProbe(x.shape[1], num_classes)
    with torch.no_grad():
        probe.linear.weight.normal_(0.0, 0.01, generator=generator)
        probe.linear.bias.zero_()
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.eval()


def probe_accuracy(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((probe(x).argmax(dim=1) == y).float().mean()) if len(y) else float("nan")


def _held_out_slice(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A stratified validation mask over the training rows (every class keeps a training row)."""
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique().tolist():
        rows = (y == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        take = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        held[rows[:take]] = True
    return held


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decays: Sequence[float],
              val_fraction: float = 0.2, max_iter: int = 300, seed: int = 0) -> tuple[LinearProbe, dict[str, Any]]:
    """Choose the penalty on a held-out slice of the training rows, then refit on all of them.

    Ties go to the stronger penalty (the simpler probe). Returns the probe and what was chosen.
    """
    held = _held_out_slice(y, val_fraction, seed)
    scores = {}
    for wd in weight_decays:
        probe = _fit(x[~held], y[~held], num_classes, wd, max_iter, seed)
        scores[wd] = probe_accuracy(probe, x[held], y[held])
    chosen = max(sorted(weight_decays, reverse=True), key=lambda wd: scores[wd])
    return _fit(x, y, num_classes, chosen, max_iter, seed), {"weight_decay": chosen, "val_accuracy": scores[chosen],
                                                             "val_rows": int(held.sum())}


def zero_shot_predictions(model: CLIP4VLA, class_names: dict[int, str], prompt: str,
                          clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """The class of each clip: the prompt closest to it (``clips``: unit embeddings; several are averaged
    similarities, e.g. video and audio for ``av``)."""
    labels = sorted(class_names)
    text = embed_text(model, [prompt.format(class_names[c]) for c in labels]).cpu()
    similarity = sum(c @ text.T for c in clips) / len(clips)
    return torch.tensor(labels)[similarity.argmax(dim=1)]


# ------------------------------------------------------------------------------ the two benchmarks


def _class_names(records: Sequence[ClipRecord]) -> dict[int, str]:
    return {r.label: r.captions[0] for r in records}


def _linear(train: LabelledFeatures, test: LabelledFeatures, kind: str, num_classes: int, settings: Any) -> dict[str, Any]:
    probe, chosen = fit_probe(train.inputs(kind), train.labels, num_classes, settings.weight_decays,
                              settings.val_fraction, settings.max_iter, settings.seed)
    return {"accuracy": probe_accuracy(probe, test.inputs(kind), test.labels), "n_train": len(train.ids),
            "n_test": len(test.ids), **chosen}


def _zero_shot(model: CLIP4VLA, test: LabelledFeatures, names: dict[int, str], prompt: str,
               clips: Sequence[torch.Tensor]) -> float:
    if not len(test.ids):
        return float("nan")
    predicted = zero_shot_predictions(model, names, prompt, clips)
    return 100.0 * float((predicted == test.labels).float().mean())


def run_esc50(model: CLIP4VLA, model_path: str | os.PathLike, section: Any, settings: Any,
              cache_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """5-fold ESC-50: train on four folds, test on the fifth (``settings``: a ``ProbeSection``)."""
    from clip4vla.data.readers.esc50 import FOLDS, read_esc50

    by_fold = {f: read_esc50(section.root, folds=[f], prepared_dir=section.prepared_dir) for f in FOLDS}
    records = [r for f in FOLDS for r in by_fold[f]]
    features = labelled_features(model, model_path, records, Path(cache_dir) / "esc50", settings.audio_type, progress)
    names = _class_names(records)
    num_classes = max(names) + 1
    result: dict[str, Any] = {"folds": [f"fold{f}" for f in FOLDS], "skipped": features.skipped, "classes": len(names)}
    linear, zero_shot = [], []
    for f in FOLDS:
        test = features.subset([r.video_id for r in by_fold[f]])
        train = features.subset([r.video_id for g in FOLDS if g != f for r in by_fold[g]])
        if settings.mode in ("linear", "both"):
            linear.append(_linear(train, test, "audio", num_classes, settings))
        if settings.mode in ("zero_shot", "both"):
            zero_shot.append(_zero_shot(model, test, names, settings.esc50_prompt, [test.audio_unit]))
    if linear:
        result["linear audio"] = linear
    if zero_shot:
        result[f"zero-shot a: {settings.esc50_prompt}"] = zero_shot
    return result


def run_ucf101(model: CLIP4VLA, model_path: str | os.PathLike, section: Any, settings: Any,
               cache_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """UCF101's official splits: train on ``trainlist0s``, test on ``testlist0s``."""
    from clip4vla.data.readers.ucf101 import read_ucf101

    lists = {(s, subset): read_ucf101(section.list_dir, split=s, subset=subset, video_dir=section.video_dir)
             for s in settings.ucf101_splits for subset in ("train", "test")}
    records = list({r.video_id: r for rs in lists.values() for r in rs}.values())
    features = labelled_features(model, model_path, records, Path(cache_dir) / "ucf101", settings.audio_type, progress)
    names = _class_names(records)
    num_classes = max(names) + 1
    kind = settings.ucf101_features
    result: dict[str, Any] = {"folds": [f"split{s}" for s in settings.ucf101_splits], "skipped": features.skipped,
                              "classes": len(names)}
    linear, zs_v, zs_av = [], [], []
    for s in settings.ucf101_splits:
        train = features.subset([r.video_id for r in lists[(s, "train")]])
        test = features.subset([r.video_id for r in lists[(s, "test")]])
        if settings.mode in ("linear", "both"):
            linear.append(_linear(train, test, kind, num_classes, settings))
        if settings.mode in ("zero_shot", "both"):
            zs_v.append(_zero_shot(model, test, names, settings.ucf101_prompt, [test.video_unit]))
            # av: the audio similarity joins only where there is sound
            audio = torch.where(test.has_audio[:, None], test.audio_unit, test.video_unit)
            zs_av.append(_zero_shot(model, test, names, settings.ucf101_prompt, [test.video_unit, audio]))
    if linear:
        result[f"linear {kind}"] = linear
    if zs_v:
        result[f"zero-shot v: {settings.ucf101_prompt}"] = zs_v
        result[f"zero-shot av: {settings.ucf101_prompt}"] = zs_av
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per row: the per-fold accuracies and their mean (the numbers Table 6 reports)."""
    out = {}
    for row, values in result.items():
        if row in ("folds", "skipped", "classes"):
            continue
        accuracies = [v["accuracy"] if isinstance(v, dict) else v for v in values]
        out[row] = {"folds": [round(a, 2) for a in accuracies], "mean": round(sum(accuracies) / len(accuracies), 2)}
        if values and isinstance(values[0], dict):
            out[row]["weight_decay"] = [v["weight_decay"] for v in values]
    return out


def format_table(name: str, result: dict[str, Any], chance: float) -> str:
    """A Table-6-style block: accuracy (%) per fold and the mean."""
    folds = result["folds"]
    lines = [f"{name}: accuracy (%) per {'fold' if folds[0].startswith('fold') else 'split'}, mean last"
             f"  (chance {chance:.1f}, {len(result['skipped'])} unreadable clips left out)",
             f"  {'':44}" + "".join(f"{f:>8}" for f in folds) + f"{'mean':>8}"]
    for row, summary in summarise(result).items():
        lines.append(f"  {row[:44]:44}" + "".join(f"{a:8.1f}" for a in summary["folds"]) + f"{summary['mean']:8.1f}")
    return "\n".join(lines)
