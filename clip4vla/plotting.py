"""Plots of training logs: a run's loss curves (written at its end) and one metric of several runs.

Both read the rows of ``metrics.jsonl`` (the source of truth; TensorBoard events mirror it):
:func:`plot_metrics` draws one run's losses and validation recalls or CIDEr into its
``loss_curves.png``; :func:`plot_runs` (``scripts/plot_runs.py``) draws one metric of several runs
side by side, e.g. the rows of an ablation, for people who do not run TensorBoard. The logs keep
the loop's short names (``ta``, ``val/t2a/R1``); :func:`metric_tag` spells them out for plots and
dashboards. Below the training harness, so a script that only plots imports no training code.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["RunsPlot", "expand_runs", "metric_tag", "plot_metrics", "plot_runs", "read_metrics", "run_labels"]

METRICS_NAME = "metrics.jsonl"

# A training row's keys (the loss terms of every task, then the loop's own), spelled out
_TRAIN_NAMES = {
    "ta": "text_audio_nce", "va": "video_audio_nce", "tv": "text_video_nce", "aa": "audio_masked_audio_nce",
    "tt": "text_text_nce", "vv": "video_video_nce", "t2v": "text_to_video_loss", "v2t": "video_to_text_loss",
    "lr": "learning_rate", "samples_per_s": "samples_per_second", "skipped": "skipped_samples",
}
# The parts of an evaluation key (``val/t2a/R1``): retrieval directions and rank statistics
_EVAL_PARTS = {
    "t2a": "text_to_audio", "v2a": "video_to_audio", "a2t": "audio_to_text", "a2v": "audio_to_video",
    "t2v": "text_to_video", "v2t": "video_to_text", "MedR": "median_rank", "MeanR": "mean_rank",
    "audio_R1": "mean_text_and_video_to_audio_R1",
}
_SPLITS = ("val", "test")


def metric_tag(key: str) -> str:
    """A ``metrics.jsonl`` key as a dashboard tag, grouped by split: ``ta`` ->
    ``train/text_audio_nce``, ``val/t2a/R1`` -> ``val/text_to_audio_R1``,
    ``test/synthetic/t2a/MedR`` -> ``test/synthetic_text_to_audio_median_rank``."""
    split, _, rest = key.partition("/")
    if split in _SPLITS and rest:
        return f"{split}/" + "_".join(_EVAL_PARTS.get(part, part) for part in rest.split("/"))
    return f"train/{_TRAIN_NAMES.get(key, key)}"


# the validation series worth a curve, and how their axis is labelled
_VALIDATION_UNITS = {"/R1": "R@1 (%)", "CIDEr": "CIDEr (x100)"}


def _validation_label(keys: Sequence[str]) -> str:
    """The y label of the validation panel: only the metrics it shows (a pre-training plot is R@1
    alone, a captioning one CIDEr alone)."""
    return " / ".join(unit for suffix, unit in _VALIDATION_UNITS.items() if any(k.endswith(suffix) for k in keys))


def plot_metrics(
    history: Sequence[dict[str, Any]], path: str | Path, loss_keys: Sequence[str] = ("loss",), title: str = "losses"
) -> Path | None:
    """Plot the ``loss_keys`` series against step, and validation R@1 or CIDEr on a second panel."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    train_rows = [r for r in history if "loss" in r]
    val_rows = [r for r in history if any(k.startswith("val/") for k in r)]
    if not train_rows:
        return None
    loss_keys = [k for k in loss_keys if any(k in r for r in train_rows)]
    fig, axes = plt.subplots(1, 2 if val_rows else 1, figsize=(12 if val_rows else 7, 4), squeeze=False)
    ax = axes[0][0]
    for key in loss_keys:
        points = [(r["step"], r[key]) for r in train_rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    if val_rows:
        ax = axes[0][1]
        val_keys = sorted({k for r in val_rows for k in r if k.startswith("val/") and k.endswith(tuple(_VALIDATION_UNITS))})
        for key in val_keys:
            points = [(r["step"], r[key]) for r in val_rows if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key[len("val/"):])
        ax.set_xlabel("step")
        ax.set_ylabel(_validation_label(val_keys))
        ax.set_title("validation")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def expand_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (or ``metrics.jsonl`` files); a folder without one stands for every run below it
    (``runs/ablation_table5/seed0`` -> its five rows)."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == METRICS_NAME:
            runs.append(path.parent)
        elif (path / METRICS_NAME).is_file():
            runs.append(path)
        elif path.is_dir() and any(path.rglob(METRICS_NAME)):
            runs += sorted(p.parent for p in path.rglob(METRICS_NAME))
        else:
            raise ValueError(f"{path}: no {METRICS_NAME} in it or below it (give a run's output folder)")
    return list(dict.fromkeys(runs))


def read_metrics(run: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of a run's log, and how many lines could not be read (a cut last line of a run
    killed mid-write, a damaged one): those are left out. A file that is not UTF-8 text is a
    ``ValueError`` naming it."""
    path = Path(run) / METRICS_NAME
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}), "
                         "so not a log the training loop wrote") from None
    rows, unreadable = [], 0
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif line.strip():
            unreadable += 1
    return rows, unreadable


def _numeric_keys(rows: list[dict[str, Any]]) -> set[str]:
    return {k for r in rows for k, v in r.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_labels(runs: Sequence[Path]) -> list[str]:
    """Each run's path below the folder all of them are in (``seed0/1_scratch``, ``seed1/1_scratch``)."""
    resolved = [Path(r).resolve() for r in runs]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath(resolved))
    return [r.relative_to(common).as_posix() if r != common else r.name for r in resolved]


@dataclasses.dataclass
class RunsPlot:
    path: Path  # the file written (a name without a suffix gets ".png")
    points: dict[str, int]  # per run label that logged the metric
    unreadable: dict[str, int]  # per run label: lines of its metrics.jsonl that were skipped


def plot_runs(runs: Sequence[Path], metric: str, out: str | Path, title: str | None = None) -> RunsPlot:
    """Draw ``metric`` against step for every run that logged it.

    A metric no run logged is a ``ValueError`` listing the ones they did.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, unreadable = {}, {}
    available: set[str] = set()
    for run, label in zip(runs, run_labels(list(runs))):
        rows, unreadable[label] = read_metrics(run)
        available |= _numeric_keys(rows)
        points = [(r["step"], r[metric]) for r in rows
                  if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric]) and "step" in r]
        if points:
            series[label] = points
    if not series:
        raise ValueError(f"no run logged {metric!r}; these did: {', '.join(sorted(available)) or 'nothing'}")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # runs that agree would hide each other: each gets its own dash and marker, and shows through
    styles = itertools.cycle(itertools.product(("o", "s", "^", "D", "v", "P", "X"), ("-", "--", ":", "-.")))
    for (label, points), (marker, dash) in zip(series.items(), styles):
        ax.plot([p[0] for p in points], [p[1] for p in points], linestyle=dash, marker=marker, markersize=4,
                markevery=max(1, len(points) // 12), alpha=0.75, linewidth=1.5, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    tag = metric_tag(metric)
    ax.set_title(title or (f"{tag}  ({metric} in {METRICS_NAME})" if tag.split("/", 1)[1] != metric else tag))
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    if not out.suffix:  # what matplotlib would write: say it
        out = out.with_name(out.name + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return RunsPlot(out, {label: len(points) for label, points in series.items()},
                    {label: n for label, n in unreadable.items() if n})
