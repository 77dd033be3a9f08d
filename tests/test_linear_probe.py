"""Linear probes: learn what is linearly there, choose the penalty without the test fold; zero-shot."""

from __future__ import annotations

import torch

import clip4vla
from clip4vla.config import ProbeSection
from clip4vla.evaluation.linear_probe import (
    LabelledFeatures, _fit, _held_out_slice, _linear, fit_probe, probe_accuracy, zero_shot_predictions)


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


def _logits(probe, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return probe(x)


def test_fit_is_the_same_for_any_thread_count_and_row_order():
    """The README's probe table must not depend on the machine: the float32 L-BFGS fit it replaced
    gave logits 9 apart between 1 and 2 threads, and 8.7 apart for the same rows shuffled."""
    x, y = blobs(40, 5, 32, spread=1.0, seed=0)
    test_x, _ = blobs(20, 5, 32, spread=1.0, seed=1)
    ids = [f"clip{i:03d}" for i in range(len(y))]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, chosen_one = fit_probe(x, y, 5, weight_decays=(1e-6, 1e-4, 1e-2), ids=ids)
        torch.set_num_threads(2)
        two, chosen_two = fit_probe(x, y, 5, weight_decays=(1e-6, 1e-4, 1e-2), ids=ids)
    finally:
        torch.set_num_threads(threads)
    assert chosen_one == chosen_two
    assert torch.equal(_logits(one, test_x), _logits(two, test_x))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(5))
    shuffled, chosen_shuffled = fit_probe(x[perm], y[perm], 5, weight_decays=(1e-6, 1e-4, 1e-2),
                                          ids=[ids[i] for i in perm.tolist()])
    assert chosen_shuffled == chosen_one
    assert torch.equal(shuffled.linear.weight, one.linear.weight) and torch.equal(shuffled.linear.bias, one.linear.bias)


def test_float32_rounding_of_the_features_does_not_move_the_probe():
    """Features differ across CPUs in their last float32 bits; the probe is the optimum of a strictly
    convex problem, so such a change moves it by far less than any decision margin."""
    x, y = blobs(40, 5, 32, spread=1.0, seed=0)
    test_x, _ = blobs(20, 5, 32, spread=1.0, seed=1)
    nudged = x * (1 + 1e-7 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9)))
    assert not torch.equal(nudged, x)
    for weight_decay in (1e-6, 1e-2):  # the weakest penalty is the worst conditioned
        exact, moved = _fit(x, y, 5, weight_decay, 300), _fit(nudged, y, 5, weight_decay, 300)
        a, b = _logits(exact, test_x), _logits(moved, test_x)
        assert (a - b).abs().max() < 1e-6, weight_decay  # ~1.6e-7 here; the L-BFGS fit moved 1.1e-5
        assert torch.equal(a.argmax(1), b.argmax(1))


def test_fit_reaches_the_optimum():
    """At the returned probe the objective's gradient (by autograd, not the solver's own formulas)
    is zero to float64 precision: the fit is the optimum, not wherever an iteration budget ended."""
    x, y = blobs(30, 4, 16, spread=2.0, seed=4)
    weight_decay = 1e-4
    probe = _fit(x, y, 4, weight_decay, 300)
    weight = probe.linear.weight.detach().clone().requires_grad_(True)
    bias = probe.linear.bias.detach().clone().requires_grad_(True)
    features = probe.norm(x.to(torch.float64))
    loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, y) + weight_decay * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-12 and bias.grad.abs().max() < 1e-12
    assert abs(float(bias.detach().sum())) < 1e-12  # the biases' free common offset is pinned


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
