"""The run's loss_curves.png: its validation axis names the metric the task validates on."""

from __future__ import annotations

import pytest

from clip4vla.plotting import plot_metrics


def _ylabels(history, tmp_path, monkeypatch) -> list[str]:
    from matplotlib.axes import Axes

    labels: list[str] = []
    original = Axes.set_ylabel
    monkeypatch.setattr(Axes, "set_ylabel", lambda self, label, *a, **k: (labels.append(label), original(self, label, *a, **k))[1])
    assert plot_metrics(history, tmp_path / "curves.png", loss_keys=("loss",)).is_file()
    return labels


@pytest.mark.parametrize("val_row, label", [
    ({"val/t2a/R1": 20.0, "val/v2a/R1": 5.0, "val/t2a/R5": 60.0, "val/audio_R1": 20.0}, "R@1 (%)"),  # pre-training
    ({"val/t2v/R1": 30.0, "val/v2t/R1": 28.0}, "R@1 (%)"),  # retrieval fine-tuning
    ({"val/CIDEr": 120.0}, "CIDEr (x100)"),  # captioning
])
def test_validation_axis_names_the_tasks_metric(val_row, label, tmp_path, monkeypatch):
    history = [{"step": 1, "epoch": 0, "loss": 2.0}, {"step": 2, "epoch": 0, "loss": 1.5},
               {"step": 2, "epoch": 0, **val_row}]
    assert _ylabels(history, tmp_path, monkeypatch) == ["loss", label]
