"""PNG of the loss curves (and validation R@1 or CIDEr) written at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


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
