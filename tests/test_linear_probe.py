"""Linear probes: learn what is linearly there, choose the penalty without the test fold; zero-shot."""

from __future__ import annotations

import torch

import clip4vla
from clip4vla.config import ProbeSection
from clip4vla.evaluation.linear_probe import (
    LabelledFeatures, _held_out_slice, _linear, fit_probe, probe_accuracy, zero_shot_predictions)


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def features(x: torch.Tensor, y: torch.Tensor, prefix: str) -> LabelledFeatures:
    n = len(y)
    return LabelledFeatures([f"{prefix}{i}" for i in range(n)], y, x, x, torch.ones(n, dtype=torch.bool), x, x, [])


def test_probe_learns_separable_classes_and_not_noise():
    x, y = blobs(30, 4, 16, spread=1.0, seed=0)
    probe, chosen = fit_probe(x, y, 4, weight_decays=(1e-4, 1e-2))
    test_x, test_y = blobs(20, 4, 16, spread=1.0, seed=1)
    assert probe_accuracy(probe, test_x, test_y) > 90  # chance 25
    noise_probe, _ = fit_probe(torch.randn(120, 16), y, 4, weight_decays=(1e-4, 1e-2))
    assert probe_accuracy(noise_probe, torch.randn(80, 16), test_y) < 50
    assert chosen["weight_decay"] in (1e-4, 1e-2) and chosen["val_rows"] == 24


def test_penalty_is_chosen_without_the_test_fold():
    x, y = blobs(25, 5, 12, spread=3.0, seed=2)
    test_x, test_y = blobs(10, 5, 12, spread=3.0, seed=3)
    settings = ProbeSection(weight_decays=(1e-6, 1e-3, 1e-1), max_iter=100)
    right = _linear(features(x, y, "tr"), features(test_x, test_y, "te"), "audio", 5, settings)
    wrong = _linear(features(x, y, "tr"), features(test_x, (test_y + 1) % 5, "te"), "audio", 5, settings)
    # the test labels change the score, never the choice
    assert (right["weight_decay"], right["val_accuracy"]) == (wrong["weight_decay"], wrong["val_accuracy"])
    assert right["accuracy"] > wrong["accuracy"]


def test_held_out_slice_is_stratified_and_keeps_a_training_row_per_class():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    held = _held_out_slice(y, 0.2, seed=0)
    assert held[y == 0].sum() == 2 and held[y == 1].sum() == 1 and held[y == 2].sum() == 0
    assert torch.equal(held, _held_out_slice(y, 0.2, seed=0))


def test_zero_shot_picks_the_closest_prompt(micro_export):
    model = clip4vla.load_model(micro_export)
    names = {0: "dog", 1: "rain", 2: "siren"}
    prompts = clip4vla.embed_text(model, [f"the sound of a {names[c]}" for c in (2, 0, 1)])
    assert zero_shot_predictions(model, names, "the sound of a {}", [prompts]).tolist() == [2, 0, 1]
