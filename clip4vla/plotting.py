"""Plots of training logs: a run's loss curves (written at its end) and one metric of several runs.

Both read the rows of ``metrics.jsonl`` (the source of truth; TensorBoard events mirror it):
:func:`plot_metrics` draws one run's losses and validation recalls or CIDEr into its
``loss_curves.png``; :func:`plot_runs` (``scripts/plot_runs.py``) draws one metric of several runs
side by side, e.g. the rows of an ablation, for people who do not run TensorBoard. Below the
training harness, so a script that only plots imports no training code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["expand_runs", "plot_metrics", "plot_runs", "read_metrics"]

METRICS_NAME = "metrics.jsonl"

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


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The rows of a run's log; a cut last line (a run killed mid-write) is left out."""
    rows = []
    for line in (Path(run) / METRICS_NAME).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _numeric_keys(rows: list[dict[str, Any]]) -> set[str]:
    return {k for r in rows for k, v in r.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _labels(runs: list[Path]) -> list[str]:
    """Each run's path below the folder the runs share (``seed0/1_scratch``)."""
    resolved = [r.resolve() for r in runs]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(*[parts[0] for parts in zip(*(r.parts for r in resolved)) if len(set(parts)) == 1])
    return [str(r.relative_to(common)) or r.name for r in resolved]


def plot_runs(runs: Sequence[Path], metric: str, out: str | Path, title: str | None = None) -> dict[str, int]:
    """Draw ``metric`` against step for every run that logged it; ``{label: points}``.

    A metric no run logged is a ``ValueError`` listing the ones they did.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    available: set[str] = set()
    for run, label in zip(runs, _labels(list(runs))):
        rows = read_metrics(run)
        available |= _numeric_keys(rows)
        points = [(r["step"], r[metric]) for r in rows
                  if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric]) and "step" in r]
        if points:
            series[label] = points
    if not series:
        raise ValueError(f"no run logged {metric!r}; these did: {', '.join(sorted(available)) or 'nothing'}")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 20 else None,
                markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return {label: len(points) for label, points in series.items()}
