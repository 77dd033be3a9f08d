"""Linear probes and zero-shot classification on frozen features: ESC-50 and UCF101 (Table 6).

Features are extracted once per model and cached (``clip4vla.extract``: resumable, unreadable files
listed), so trying another regularisation or mode costs seconds.

**Linear probe.** ``LayerNorm + Linear`` on the masked mean of the per-segment audio features
(ESC-50, audio type [NB]) or of the per-frame vision features concatenated with the audio ones
(UCF101; zeros for a video without sound): multinomial logistic regression with an L2 penalty on
the linear weight. The penalty is chosen on a stratified slice of the *training* folds, then the
probe is refitted on all of them and scored once on the test fold. The released code instead
reports the best epoch *on the test fold*, which flatters every number.

**Why the fit is exact, not just "trained".** The probe must give the same table on every CPU.
An earlier version fitted in float32 with 300 L-BFGS steps and an affine LayerNorm: its learnable
scale dodged the penalty (the problem had no unique optimum) and the fit stopped wherever 300 steps
left it, so the last-bit differences of an AVX-512 and an AVX2 matmul grew into a different probe
(ESC-50 96.7 % on one machine, 97.1 % on another). Now the LayerNorm has no parameters, the
objective is strictly convex (the L2 penalty, plus pinning the biases' sum, which no prediction
depends on, to zero) and Newton's method with conjugate-gradient steps solves it in float64 to the
limit of float64 (gradient ~1e-16, ~10-20 steps): the result is *the* optimum, which depends
continuously on the features, so last-bit differences in the arithmetic or a float32 rounding of a
feature move the weights by ~1e-12 or ~1e-8, far below any decision margin. Rows are put in the
order of their clip ids before anything else, so the fit (and the held-out slice) do not depend on
the order the rows arrive in.

Why not the shared training loop (``clip4vla.train.loop``): a probe is a convex fit of a few
thousand parameters on a few thousand cached vectors that finishes in a second. The loop's
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
    """``LayerNorm + Linear`` in float64: the normalisation makes one penalty grid fit every feature
    scale; it has no parameters, so the L2 penalty on the linear weight really bounds the probe."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, dtype=torch.float64)
        self.linear = nn.Linear(dim, num_classes, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.to(torch.float64)))


class _Objective:
    """Mean cross-entropy + ``weight_decay * |W|^2`` + ``(sum of biases)^2 / 2`` of ``[W | b]``.

    The last term is zero at every optimum worth having (adding a constant to every class's bias
    changes no probability), and it makes the Hessian positive definite in that direction too.
    Gradients and Hessian-vector products are written out (no autograd): two matmuls each.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float) -> None:
        self.x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # [N, D + 1]: the bias column
        self.targets = F.one_hot(y, num_classes).to(x.dtype)  # [N, C]
        self.penalty = torch.full((num_classes, self.x.shape[1]), 2.0 * weight_decay, dtype=x.dtype)
        self.penalty[:, -1] = 0.0  # biases are not shrunk

    def value(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The objective at ``w [C, D + 1]`` and the class probabilities ``[N, C]`` there."""
        logits = self.x @ w.T
        log_norm = torch.logsumexp(logits, dim=1)
        loss = (log_norm - (logits * self.targets).sum(1)).mean()
        value = loss + 0.5 * (self.penalty * w * w).sum() + 0.5 * w[:, -1].sum() ** 2
        return float(value), torch.exp(logits - log_norm[:, None])

    def gradient(self, w: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        g = (probs - self.targets).T @ self.x / len(self.x) + self.penalty * w
        g[:, -1] += w[:, -1].sum()
        return g

    def hessian_times(self, probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = self.x @ v.T  # [N, C]
        h = (probs * (a - (probs * a).sum(1, keepdim=True))).T @ self.x / len(self.x) + self.penalty * v
        h[:, -1] += v[:, -1].sum()
        return h

    def block_preconditioner(self, probs: torch.Tensor) -> torch.Tensor | None:
        """Cholesky factors ``[C, D + 1, D + 1]`` of the Hessian's per-class diagonal blocks (None if one
        is not positive definite, which only a zero weight decay allows). Each block is exact; only
        the coupling between classes is left to the conjugate gradients, so a weak penalty — the
        ill-conditioned case — costs tens of iterations instead of hundreds."""
        weights = probs * (1.0 - probs)  # [N, C]
        blocks = torch.stack([(self.x * weights[:, c:c + 1]).T @ self.x for c in range(weights.shape[1])])
        blocks = blocks / len(self.x) + torch.diag_embed(self.penalty)
        blocks[:, -1, -1] += 1.0  # the biases' sum term, within each class
        factors, info = torch.linalg.cholesky_ex(blocks)
        return factors if not bool(info.any()) else None


def _newton_direction(objective: _Objective, probs: torch.Tensor, g: torch.Tensor, max_cg: int) -> torch.Tensor:
    """Approximately solve ``H d = -g`` by conjugate gradients preconditioned with the per-class
    blocks of ``H`` (relative residual ``min(0.5, |g|^0.5)``, at least 1e-6: quadratic convergence
    without asking for digits float64 does not have)."""
    factors = objective.block_preconditioner(probs)

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return r if factors is None else torch.cholesky_solve(r.unsqueeze(-1), factors).squeeze(-1)

    d = torch.zeros_like(g)
    r = -g
    z = precondition(r)
    s = z
    rz = float((r * z).sum())
    norm = float(r.norm())
    stop = max(min(0.5, norm ** 0.5), 1e-6) * norm
    for _ in range(max_cg):
        hs = objective.hessian_times(probs, s)
        curvature = float((s * hs).sum())
        if curvature <= 0.0:  # only with weight_decay 0: no positive curvature left along s
            break
        alpha = rz / curvature
        d = d + alpha * s
        r = r - alpha * hs
        if float(r.norm()) <= stop:
            break
        z = precondition(r)
        rz_next = float((r * z).sum())
        s = z + (rz_next / rz) * s
        rz = rz_next
    return d if bool(d.abs().sum() > 0) else -g


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int) -> LinearProbe:
    """The probe minimising the objective on ``(x, y)``, by Newton-CG in float64 (module doc).

    Steps are accepted by an Armijo test while the objective can still resolve the decrease; below
    that, a step is taken only if it shrinks the gradient, and the fit ends when none does: the
    gradient is then at float64's floor (~1e-16).
    """
    probe = LinearProbe(x.shape[1], num_classes)
    with torch.no_grad():
        features = probe.norm(x.to(torch.float64))  # [N, D]
        objective = _Objective(features, y, num_classes, weight_decay)
        w = torch.zeros(num_classes, features.shape[1] + 1, dtype=torch.float64)  # [C, D + 1]
        value, probs = objective.value(w)
        g = objective.gradient(w, probs)
        for _ in range(max_iter):
            g_max = float(g.abs().max())
            d = _newton_direction(objective, probs, g, max_cg=1000)
            slope, step, accepted = float((g * d).sum()), 1.0, False
            while -step * slope > 1e-14 * abs(value):  # the decrease is still above the rounding of the value
                new_value, new_probs = objective.value(w + step * d)
                if new_value < value + 1e-4 * step * slope:
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                step = 1.0
                new_value, new_probs = objective.value(w + d)
            new_g = objective.gradient(w + step * d, new_probs)
            if not accepted and float(new_g.abs().max()) >= g_max:
                break  # converged as far as float64 allows
            w, value, probs, g = w + step * d, new_value, new_probs, new_g
        else:
            log.warning("linear probe: %d Newton steps left the gradient at %.1e (weight decay %g); "
                        "raise probe.max_iter", max_iter, float(g.abs().max()), weight_decay)
        probe.linear.weight.copy_(w[:, :-1])
        probe.linear.bias.copy_(w[:, -1])
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
              val_fraction: float = 0.2, max_iter: int = 300, seed: int = 0,
              ids: Sequence[str] | None = None) -> tuple[LinearProbe, dict[str, Any]]:
    """Choose the penalty on a held-out slice of the training rows, then refit on all of them.

    ``ids`` (one per row, e.g. clip ids): the rows are first put in id order, so the held-out slice
    and the fit do not depend on the order the rows come in. Ties go to the stronger penalty (the
    simpler probe). ``max_iter`` caps the Newton steps of each fit. Returns the probe and what was
    chosen.
    """
    if ids is not None:
        if len(ids) != len(y):
            raise ValueError(f"fit_probe: {len(ids)} ids for {len(y)} rows")
        order = torch.tensor(sorted(range(len(ids)), key=lambda i: ids[i]), dtype=torch.long)
        x, y = x[order], y[order]
    held = _held_out_slice(y, val_fraction, seed)
    scores = {}
    for wd in weight_decays:
        probe = _fit(x[~held], y[~held], num_classes, wd, max_iter)
        scores[wd] = probe_accuracy(probe, x[held], y[held])
    chosen = max(sorted(weight_decays, reverse=True), key=lambda wd: scores[wd])
    return _fit(x, y, num_classes, chosen, max_iter), {"weight_decay": chosen, "val_accuracy": scores[chosen],
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
                              settings.val_fraction, settings.max_iter, settings.seed, ids=train.ids)
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


def run_manifest(model: CLIP4VLA, model_path: str | os.PathLike, data: Any, settings: Any,
                 cache_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Your own labelled media (``data.corpus: manifest`` with a ``label`` column): train on
    ``data.train_split``, test on ``data.test_split``; video+audio features (zeros for a sound file's
    frames or a silent video's sound), zero-shot by ``probe.manifest_prompt``. A window's features
    are those of its whole file (features are extracted per file)."""
    from clip4vla.data.corpora import read_split

    train_records, test_records = (list(read_split(data, "manifest", split, "classification"))
                                   for split in (data.train_split, data.test_split))
    records = list({r.video_id: r for r in train_records + test_records}.values())
    features = labelled_features(model, model_path, records, Path(cache_dir) / "manifest", settings.audio_type, progress)
    class_names = read_split(data, "manifest", data.train_split, "classification").class_names
    names = dict(enumerate(class_names))
    train = features.subset([r.video_id for r in train_records])
    test = features.subset([r.video_id for r in test_records])
    result: dict[str, Any] = {"folds": [data.test_split], "skipped": features.skipped, "classes": len(names)}
    if settings.mode in ("linear", "both"):
        result["linear video+audio"] = [_linear(train, test, "video+audio", len(names), settings)]
    if settings.mode in ("zero_shot", "both"):
        audio = torch.where(test.has_audio[:, None], test.audio_unit, test.video_unit)
        result[f"zero-shot av: {settings.manifest_prompt}"] = [
            _zero_shot(model, test, names, settings.manifest_prompt, [test.video_unit, audio])]
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
