"""Parameter groups of build_optimizer and the warm-up + cosine schedule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from clip4vla.train.optim import WarmupCosine, build_optimizer, param_groups, warmup_cosine_factor


class Vision(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 4, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(8))
        self.positional_embedding = nn.Parameter(torch.zeros(5, 8))
        self.ln_pre = nn.LayerNorm(8)
        self.attn = nn.Linear(8, 8)
        self.proj = nn.Parameter(torch.zeros(8, 4))


class Clip(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = Vision()
        self.token_embedding = nn.Embedding(10, 8)
        self.ln_final = nn.LayerNorm(8)
        self.text_projection = nn.Parameter(torch.zeros(8, 4))


class Audio(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = Vision()
        self.type_embedding = nn.Parameter(torch.zeros(2, 8))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.clip = Clip()
        self.audio = Audio()
        self.fusion = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)
        self.clip.text_projection.requires_grad_(False)  # a frozen parameter is left out


def names(groups, key):
    return sorted(n for n, _ in groups[key])


def test_group_membership():
    groups = param_groups(Model())
    assert names(groups, "backbone_decay") == sorted(
        [
            "clip.visual.conv1.weight", "clip.visual.attn.weight", "clip.visual.proj",
            "audio.visual.conv1.weight", "audio.visual.attn.weight", "audio.visual.proj",
        ]
    )
    assert names(groups, "backbone_no_decay") == sorted(
        [
            "clip.visual.class_embedding", "clip.visual.positional_embedding", "clip.visual.ln_pre.weight",
            "clip.visual.ln_pre.bias", "clip.visual.attn.bias", "clip.token_embedding.weight",
            "clip.ln_final.weight", "clip.ln_final.bias",
            "audio.visual.class_embedding", "audio.visual.positional_embedding", "audio.visual.ln_pre.weight",
            "audio.visual.ln_pre.bias", "audio.visual.attn.bias", "audio.type_embedding",
        ]
    )
    assert names(groups, "new") == sorted(
        ["fusion.0.weight", "fusion.0.bias", "fusion.1.weight", "fusion.1.bias", "head.weight", "head.bias"]
    )


def test_optimizer_settings_and_lrs():
    model = Model()
    opt = build_optimizer(model, lr=1e-4, coef_lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["backbone_decay"]["lr"] == pytest.approx(1e-7)
    assert by_name["backbone_decay"]["weight_decay"] == 0.2
    assert by_name["backbone_no_decay"]["lr"] == pytest.approx(1e-7)
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0
    assert by_name["new"]["lr"] == pytest.approx(1e-4) and by_name["new"]["weight_decay"] == 0.0
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    assert all(p is not model.clip.text_projection for g in opt.param_groups for p in g["params"])


def test_only_decay_group_is_shrunk_by_weight_decay():
    model = Model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = build_optimizer(model, lr=0.1, coef_lr=1.0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)  # Adam update is 0: only decoupled decay moves weights
    opt.step()
    assert torch.allclose(model.clip.visual.conv1.weight, torch.full_like(model.clip.visual.conv1.weight, 1 - 0.1 * 0.2))
    assert torch.equal(model.clip.visual.positional_embedding, torch.ones(5, 8))
    assert torch.equal(model.audio.type_embedding, torch.ones(2, 8))
    assert torch.equal(model.head.weight, torch.ones(2, 4))


def test_fused_update_equals_the_reference_adamw():
    """The fused kernel (used where torch has one) takes the same steps as the loop version."""
    torch.manual_seed(0)
    model = Model()
    reference = Model()
    reference.load_state_dict(model.state_dict())
    fused = build_optimizer(model, lr=1e-2, coef_lr=0.5)
    loop = build_optimizer(reference, lr=1e-2, coef_lr=0.5)
    for group in loop.param_groups:
        group["fused"] = None
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):
        assert all(g["fused"] for g in fused.param_groups)  # CPU has a fused AdamW from torch 2.4
    for _ in range(5):
        for a, b in zip(model.parameters(), reference.parameters()):
            if a.requires_grad:
                a.grad = torch.randn_like(a)
                b.grad = a.grad.clone()
        fused.step()
        loop.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_pretraining_audio_only_is_all_backbone():
    model = Model()
    model.clip.requires_grad_(False)
    model.fusion.requires_grad_(False)
    model.head.requires_grad_(False)
    opt = build_optimizer(model, lr=1e-7, coef_lr=1.0)
    assert {g["name"] for g in opt.param_groups} == {"backbone_decay", "backbone_no_decay"}
    assert all(g["lr"] == pytest.approx(1e-7) for g in opt.param_groups)


def test_build_optimizer_errors():
    model = Model()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        build_optimizer(model, lr=1e-4, coef_lr=1.0)
    with pytest.raises(ValueError, match="coef_lr"):
        build_optimizer(Model(), lr=1e-4, coef_lr=0.0)


# ----------------------------------------------------------------------------------------- schedule
def _sched(total=100, warmup=0.1, lr=2.0):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": lr}, {"params": [nn.Parameter(torch.zeros(1))], "lr": lr / 10}])
    return opt, WarmupCosine(opt, total_steps=total, warmup=warmup)


def _advance(opt, sched, n):
    for _ in range(n):
        opt.step()
        sched.step()


def test_schedule_values():
    opt, sched = _sched()
    assert opt.param_groups[0]["lr"] == 0.0  # step 0
    _advance(opt, sched, 5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # half-way through warm-up
    _advance(opt, sched, 5)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)  # end of warm-up: the peak
    assert opt.param_groups[1]["lr"] == pytest.approx(0.2)  # groups keep their ratio
    _advance(opt, sched, 45)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # middle of the cosine
    _advance(opt, sched, 20)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 65 / 90)))
    _advance(opt, sched, 25)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # end
    _advance(opt, sched, 3)
    assert opt.param_groups[0]["lr"] == 0.0  # stays at 0 past the end


def test_factor_function_and_no_warmup():
    assert warmup_cosine_factor(0, 10, 0) == 1.0
    assert warmup_cosine_factor(3, 10, 4) == pytest.approx(0.75)
    assert warmup_cosine_factor(10, 10, 4) == 0.0
    with pytest.raises(ValueError, match="warmup"):
        _sched(warmup=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        _sched(total=0)


def test_scheduler_state_dict_round_trips_through_weights_only():
    opt, sched = _sched()
    _advance(opt, sched, 37)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    opt2, sched2 = _sched()
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert sched2.last_epoch == 37
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
    _advance(opt, sched, 20)
    _advance(opt2, sched2, 20)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
