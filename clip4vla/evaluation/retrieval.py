"""Retrieval metrics: R@1/5/10, median and mean rank, one rank per query.

Rank rule (all directions): ``rank = 1 + (#targets scored strictly higher than the ground truth)
+ (#other targets tied with it) / 2``, i.e. the average of the positions the tied block could
occupy. REF (CLIP4Clip / CLIP4VLA ``compute_metrics``) instead emits one rank per tied position,
so a tied query is counted several times and the averages run over more than N entries; on
tie-free matrices both agree exactly (``tests/test_retrieval_metrics.py`` checks the fixture).
R@K counts a query when its rank <= K, so a query tied for first with one other (rank 1.5) is
not an R@1 hit.

Multi-caption sets (VATEX: 10 captions per video, AudioCaps: 5): pass ``text_to_video``,
the video index of every text row.

* text->video (:func:`retrieval_metrics`): one query per caption, its target is its video.
* video->text (:func:`video_to_text_metrics`): one query per video; its rank is the position of
  its **best-ranked own caption** among all captions. The video's other captions never count
  against it (they are not "wrong" answers), so
  ``rank = 1 + #(other videos' captions above the best own caption) + #(other videos' captions
  tied with it) / 2``. With one caption per video this is the plain rule above on ``sim.T``.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np
import torch

__all__ = ["RANK_METRICS", "retrieval_metrics", "streamed_retrieval_metrics", "video_to_text_metrics", "format_metrics"]

# What every retrieval evaluation reports per direction.
RANK_METRICS = ("R1", "R5", "R10", "MedR", "MeanR")

ArrayLike = Union[torch.Tensor, np.ndarray]
_KS = (1, 5, 10)


def _as_sim(sim: ArrayLike) -> torch.Tensor:
    if not isinstance(sim, (torch.Tensor, np.ndarray)):
        raise TypeError(f"sim must be a torch.Tensor or numpy array, got {type(sim).__name__}")
    t = torch.as_tensor(sim)
    if t.ndim != 2:
        raise ValueError(f"sim must be 2-D [N_query, N_target], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"sim is empty, shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"sim must hold real scores, got {t.dtype}")
    # Comparisons are exact in the input's own float type (no copy for float input; a float64
    # copy would double the memory of a 15k x 1.5k VATEX matrix for nothing).
    if not t.is_floating_point():
        t = t.to(torch.float64)
    t = t.detach()
    if torch.isnan(t).any():
        rows = torch.isnan(t).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"sim contains NaN (rows {rows}...); ranks would be undefined")
    return t


def _as_mapping(text_to_video: ArrayLike | None, n_text: int, n_video: int) -> torch.Tensor:
    if text_to_video is None:
        if n_text != n_video:
            raise ValueError(
                f"sim is {n_text}x{n_video}: the diagonal ground truth needs a square matrix; "
                "pass text_to_video (the video index of every text) for multi-caption sets"
            )
        return torch.arange(n_text)
    m = torch.as_tensor(text_to_video)
    if m.ndim != 1 or m.shape[0] != n_text:
        raise ValueError(f"text_to_video must have shape [{n_text}] (one entry per text row), got {tuple(m.shape)}")
    if m.is_floating_point() or m.dtype == torch.bool:
        raise TypeError(f"text_to_video must hold integer video indices, got {m.dtype}")
    m = m.to("cpu", torch.long)
    if m.numel() and (m.min() < 0 or m.max() >= n_video):
        bad = m[(m < 0) | (m >= n_video)][:5].tolist()
        raise ValueError(f"text_to_video has indices outside [0, {n_video}): {bad}")
    return m


def _rank_from_counts(higher: torch.Tensor, tied_others: torch.Tensor) -> torch.Tensor:
    """1-based float64 rank on CPU: the mean of the positions a tied block can occupy."""
    return 1.0 + higher.cpu().double() + tied_others.cpu().double() / 2.0


def _summarise(ranks: torch.Tensor, percent: bool) -> dict:
    """R@K, MedR, MeanR of 1-based float ranks ``[N]``."""
    n = ranks.numel()
    scale = 100.0 if percent else 1.0
    out: dict = {}
    for k in _KS:
        hits = float((ranks <= k).sum().item())
        # Same arithmetic as REF (hits * 100 / n) so the tie-free fixture matches bit-exactly.
        out[f"R{k}"] = hits * scale / n
    # Median as numpy defines it (mean of the two middle values for even N), like REF;
    # torch.median would return the lower one.
    srt = ranks.sort().values
    out["MedR"] = float((srt[(n - 1) // 2] + srt[n // 2]).item() / 2.0)
    out["MeanR"] = float(ranks.mean().item())
    out["ranks"] = ranks
    return out


def retrieval_metrics(sim: ArrayLike, text_to_video: ArrayLike | None = None, *, percent: bool = True) -> dict:
    """Metrics for the row queries of ``sim`` (text->video when ``sim`` is ``[N_text, N_video]``).

    Args:
        sim: similarity ``[N_query, N_target]`` (torch or numpy); higher is better.
        text_to_video: optional ``[N_query]`` target index of every query; default the diagonal.
        percent: R@K in percent (default) or as fractions (REF CLIP4VLA reports fractions).

    Returns:
        ``{"R1", "R5", "R10", "MedR", "MeanR"}`` as floats and ``"ranks"``: float64 ``[N_query]``
        (1-based; a half when the ground truth ties with an odd number of other targets).
    """
    s = _as_sim(sim)
    target = _as_mapping(text_to_video, *s.shape).to(s.device)
    gt = s.gather(1, target[:, None])  # [N, 1]
    # int32 counting is twice as fast as the default int64 sum of a bool tensor.
    higher = (s > gt).sum(1, dtype=torch.int32)
    equal = (s == gt).sum(1, dtype=torch.int32)  # includes the ground truth itself
    return _summarise(_rank_from_counts(higher, equal - 1), percent)


def video_to_text_metrics(
    sim: ArrayLike, text_to_video: ArrayLike | None = None, *, percent: bool = True
) -> dict:
    """Video->text metrics from the same ``[N_text, N_video]`` matrix as :func:`retrieval_metrics`.

    A video's rank is that of its best-ranked own caption (module docstring). Every video must
    have at least one caption.
    """
    s = _as_sim(sim)
    n_text, n_video = s.shape
    if text_to_video is None:
        return retrieval_metrics(s.T, None, percent=percent)
    mapping = _as_mapping(text_to_video, n_text, n_video)
    n_captions = torch.bincount(mapping, minlength=n_video)
    if (n_captions == 0).any():
        missing = (n_captions == 0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"videos without any caption in text_to_video (first: {missing}); their rank is undefined")
    mapping = mapping.to(s.device)
    own_scores = s[torch.arange(n_text, device=s.device), mapping]  # [N_text]
    best_own = torch.full((n_video,), -torch.inf, dtype=s.dtype, device=s.device)
    best_own = best_own.scatter_reduce(0, mapping, own_scores, reduce="amax")  # [N_video]
    # No caption of a video scores above its best own caption, so every caption above it
    # belongs to another video; ties do include the video's own captions: remove them.
    higher = (s > best_own).sum(0, dtype=torch.int32)
    equal = (s == best_own).sum(0, dtype=torch.int32)
    own_equal = torch.zeros(n_video, dtype=torch.int32, device=s.device)
    own_equal.index_add_(0, mapping, (own_scores == best_own[mapping]).to(torch.int32))
    return _summarise(_rank_from_counts(higher, equal - own_equal), percent)


# elements of one chunk of scores: 64 M floats (256 MB in fp32), whatever the number of videos
CHUNK_ELEMENTS = 1 << 26
# below this many scores (1 GB in fp32) the first pass keeps its chunks for the second
CACHE_ELEMENTS = 1 << 28


def streamed_retrieval_metrics(
    score_rows: Callable[[slice], ArrayLike],
    n_text: int,
    n_video: int,
    text_to_video: ArrayLike | None = None,
    *,
    rows_per_chunk: int | None = None,
    cache_elements: int = CACHE_ELEMENTS,
    percent: bool = True,
) -> tuple[dict, dict]:
    """Text->video and video->text metrics without ever holding the ``[N_text, N_video]`` matrix.

    ``score_rows(rows)`` returns the scores of the text rows ``rows`` (a slice) against every
    video, ``[len(rows), N_video]``, and must return the same values each time it is called. The
    ranks are exactly those of :func:`retrieval_metrics` and :func:`video_to_text_metrics` on the
    full matrix (same tie rule): a rank needs only the ground truth's score and the counts of
    scores above and equal to it. Text->video counts come from one pass over chunks of rows;
    video->text needs every video's best own caption first, so a second pass recounts the
    chunks — from memory when all scores fit in ``cache_elements`` (default 1 GB of fp32), else
    by calling ``score_rows`` again. Memory: one chunk (``rows_per_chunk`` rows, default 64 M
    scores) plus ``O(N_text + N_video)``, or the cache.
    """
    if n_text <= 0 or n_video <= 0:
        raise ValueError(f"cannot rank {n_text} texts against {n_video} videos")
    mapping = _as_mapping(text_to_video, n_text, n_video)
    if text_to_video is not None:
        n_captions = torch.bincount(mapping, minlength=n_video)
        if (n_captions == 0).any():
            missing = (n_captions == 0).nonzero().flatten()[:5].tolist()
            raise ValueError(f"videos without any caption in text_to_video (first: {missing}); their rank is undefined")
    step = rows_per_chunk or max(1, CHUNK_ELEMENTS // n_video)
    chunks = [slice(i, min(i + step, n_text)) for i in range(0, n_text, step)]
    cache: dict[int, torch.Tensor] | None = {} if n_text * n_video <= cache_elements else None

    def scores(rows: slice) -> torch.Tensor:
        if cache is not None and rows.start in cache:
            return cache.pop(rows.start)
        s = _as_sim(score_rows(rows))
        if s.shape != (rows.stop - rows.start, n_video):
            raise ValueError(f"score_rows({rows.start}:{rows.stop}) gave shape {tuple(s.shape)}, expected "
                             f"({rows.stop - rows.start}, {n_video})")
        return s

    own = torch.empty(n_text, dtype=torch.float64)
    higher = torch.zeros(n_text, dtype=torch.int64)
    equal = torch.zeros(n_text, dtype=torch.int64)
    for rows in chunks:  # text -> video: each row holds its own ground truth
        s = scores(rows)
        gt = s.gather(1, mapping[rows].to(s.device)[:, None])
        own[rows] = gt[:, 0].double().cpu()
        higher[rows] = (s > gt).sum(1, dtype=torch.int32).cpu().long()
        equal[rows] = (s == gt).sum(1, dtype=torch.int32).cpu().long()
        if cache is not None:
            cache[rows.start] = s
    t2v = _summarise(_rank_from_counts(higher, equal - 1), percent)

    best_own = torch.full((n_video,), -torch.inf, dtype=torch.float64).scatter_reduce(0, mapping, own, reduce="amax")
    higher_v = torch.zeros(n_video, dtype=torch.int64)
    equal_v = torch.zeros(n_video, dtype=torch.int64)
    for rows in chunks:  # video -> text: a column's best own caption, against other videos' captions
        s = scores(rows)
        best = best_own.to(s.device, s.dtype)
        # no own caption is above the best one; own captions tied with it are taken out after
        higher_v += (s > best).sum(0, dtype=torch.int32).cpu().long()
        equal_v += (s == best).sum(0, dtype=torch.int32).cpu().long()
    own_tied = (own == best_own[mapping]).long()
    equal_v -= torch.zeros(n_video, dtype=torch.int64).index_add_(0, mapping, own_tied)
    v2t = _summarise(_rank_from_counts(higher_v, equal_v), percent)
    return t2v, v2t


def format_metrics(metrics: dict, prefix: str = "") -> str:
    """One log line, e.g. ``t2v R@1 12.3 R@5 34.5 R@10 45.6 MedR 4.0 MeanR 7.1``."""
    missing = [k for k in RANK_METRICS if k not in metrics]
    if missing:
        raise KeyError(f"metrics dict lacks {missing}; expected the output of retrieval_metrics")
    body = " ".join(f"R@{k} {metrics[f'R{k}']:.1f}" for k in _KS)
    line = f"{body} MedR {metrics['MedR']:.1f} MeanR {metrics['MeanR']:.1f}"
    return f"{prefix} {line}" if prefix else line
