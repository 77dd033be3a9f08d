"""NCE losses against values computed by hand (explicit log-sum-exp in Python / NumPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip4vla.losses import (
    LogitScale,
    PretrainLoss,
    gather_with_grad,
    inter_modal_nce,
    intra_modal_nce,
    self_similarity_nce,
    symmetric_nce,
)


def lse(values) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def ce_rows(matrix: np.ndarray, candidates=None) -> float:
    """Mean over rows i of ``lse(candidate logits of row i) - matrix[i, i]``."""
    n = matrix.shape[0]
    total = 0.0
    for i in range(n):
        row = [matrix[i, j] for j in range(matrix.shape[1])] if candidates is None else candidates(i)
        total += lse(row) - matrix[i, i]
    return total / n


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


# --------------------------------------------------------------------------------------- symmetric
def test_symmetric_nce_2x2_by_hand():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    ce_s = ((lse([1, 2]) - 1) + (lse([3, 4]) - 4)) / 2  # rows of S
    ce_st = ((lse([1, 3]) - 1) + (lse([2, 4]) - 4)) / 2  # rows of S^T
    assert symmetric_nce(s).item() == pytest.approx(0.5 * (ce_s + ce_st), abs=1e-12)


def test_symmetric_nce_3x3_matches_numpy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 3)) * 4
    expected = 0.5 * (ce_rows(s) + ce_rows(s.T))
    assert symmetric_nce(torch.from_numpy(s)).item() == pytest.approx(expected, abs=1e-12)


def test_symmetric_nce_rejects_non_square():
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        symmetric_nce(torch.zeros(2, 3))


# ------------------------------------------------------------------------------------- inter-modal
def test_inter_modal_equals_symmetric_nce_of_scaled_similarity_and_is_symmetric():
    x, y = unit_rows(5, 8, 0), unit_rows(5, 8, 1)
    expected = symmetric_nce(7.0 * x @ y.t())
    assert inter_modal_nce(x, y, 7.0).item() == pytest.approx(expected.item(), abs=1e-12)
    assert inter_modal_nce(y, x, 7.0).item() == pytest.approx(expected.item(), abs=1e-12)
    # a tensor scale behaves like the float
    assert inter_modal_nce(x, y, torch.tensor(7.0)).item() == pytest.approx(expected.item(), abs=1e-6)


def test_inter_modal_by_hand_on_2d_vectors():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.6, 0.8], [0.8, -0.6]], dtype=torch.float64)
    s = 10.0
    sim = [[s * 0.6, s * 0.8], [s * 0.8, s * -0.6]]  # x_i . y_j
    row = ((lse(sim[0]) - sim[0][0]) + (lse(sim[1]) - sim[1][1])) / 2
    col = ((lse([sim[0][0], sim[1][0]]) - sim[0][0]) + (lse([sim[0][1], sim[1][1]]) - sim[1][1])) / 2
    assert inter_modal_nce(x, y, s).item() == pytest.approx(0.5 * (row + col), abs=1e-12)


def test_perfect_alignment_gives_near_zero_loss_and_shuffling_does_not():
    x = torch.eye(4, dtype=torch.float64)
    assert inter_modal_nce(x, x.clone(), 100.0).item() == pytest.approx(math.log(1 + 3 * math.exp(-100)), abs=1e-12)
    assert inter_modal_nce(x, x[[1, 0, 3, 2]], 100.0).item() > 50


def test_inter_modal_shape_errors():
    with pytest.raises(ValueError, match=r"x \(3, 4\) vs y \(2, 4\)"):
        inter_modal_nce(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="2-D"):
        inter_modal_nce(torch.zeros(3, 4, 1), torch.zeros(3, 4, 1), 1.0)


def test_self_similarity_nce_is_ce_of_x_xT():
    x = unit_rows(4, 3, 5)
    s = 3.0
    m = (s * x @ x.t()).numpy()
    assert self_similarity_nce(x, s).item() == pytest.approx(ce_rows(m), abs=1e-12)


# ------------------------------------------------------------------------------------- intra-modal
def _intra_by_hand(z: np.ndarray, zh: np.ndarray, s: float) -> float:
    """Eq. 3–4, both directions: candidates {s z_i.zh_j for all j} + {s z_i.z_k for k != i}."""
    n = z.shape[0]

    def direction(a, b):
        total = 0.0
        for i in range(n):
            cands = [s * a[i] @ b[j] for j in range(n)] + [s * a[i] @ a[k] for k in range(n) if k != i]
            total += lse(cands) - s * a[i] @ b[i]
        return total / n

    return 0.5 * (direction(z, zh) + direction(zh, z))


def test_intra_modal_3x3_by_hand():
    z, zh = unit_rows(3, 3, 2), unit_rows(3, 3, 3)
    expected = _intra_by_hand(z.numpy(), zh.numpy(), 5.0)
    assert intra_modal_nce(z, zh, 5.0).item() == pytest.approx(expected, abs=1e-12)


def test_intra_modal_removes_exactly_the_self_similarity():
    z, zh = unit_rows(4, 6, 4), unit_rows(4, 6, 5)
    s = 4.0
    got = intra_modal_nce(z, zh, s).item()
    # keeping z_i.z_i (= 1, the largest possible logit) among the negatives would raise the loss
    zn, zhn = z.numpy(), zh.numpy()

    def with_diag(a, b):
        return np.mean(
            [lse([s * a[i] @ b[j] for j in range(4)] + [s * a[i] @ a[k] for k in range(4)]) - s * a[i] @ b[i] for i in range(4)]
        )

    wrong = 0.5 * (with_diag(zn, zhn) + with_diag(zhn, zn))
    assert got == pytest.approx(_intra_by_hand(zn, zhn, s), abs=1e-12)
    assert wrong - got > 1e-3


def test_intra_modal_perfect_copy_with_spread_batch_is_low():
    z = torch.eye(5, dtype=torch.float64)
    # candidates per row: the copy (s), 4 other copies (0) and 4 other clean audios (0)
    assert intra_modal_nce(z, z.clone(), 100.0).item() == pytest.approx(math.log(1 + 8 * math.exp(-100)), abs=1e-12)


def test_intra_modal_gradients_are_finite_and_correct():
    z = unit_rows(3, 4, 6).requires_grad_(True)
    zh = unit_rows(3, 4, 7).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: intra_modal_nce(a, b, 2.0), (z, zh))


def test_gather_with_grad_is_identity_without_process_group():
    t = torch.randn(3, 2, requires_grad=True)
    out = gather_with_grad(t)
    assert out is t


# ------------------------------------------------------------------------------------- logit scale
def test_fixed_logit_scale_is_100_and_not_a_parameter():
    ls = LogitScale()
    assert ls().item() == pytest.approx(100.0, rel=1e-6)
    assert list(ls.parameters()) == [] and ls.state_dict() == {}


def test_learnable_logit_scale_clip_init_clamp_and_grad():
    ls = LogitScale(learnable=True)
    assert ls().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert [n for n, _ in ls.named_parameters()] == ["log_scale"]
    ls().backward()
    assert ls.log_scale.grad.item() == pytest.approx(1 / 0.07, rel=1e-5)  # d exp(u)/du
    with torch.no_grad():
        ls.log_scale.fill_(math.log(500.0))
    assert ls().item() == pytest.approx(100.0, rel=1e-6)
    with pytest.raises(ValueError, match="> 0"):
        LogitScale(init_scale=0.0)


# ------------------------------------------------------------------------------------ PretrainLoss
def _features(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) * 3 for _ in range(4)]


def test_pretrain_loss_is_sum_of_paper_terms_on_normalised_features():
    t, v, a, m = _features()
    loss_fn = PretrainLoss(intra_modal=True)
    total, parts = loss_fn(t, v, a, m)
    tn, vn, an, mn = (F.normalize(x, dim=-1) for x in (t, v, a, m))
    ta = inter_modal_nce(tn, an, 100.0)
    va = inter_modal_nce(vn, an, 100.0)
    aa = intra_modal_nce(an, mn, 100.0)
    assert total.item() == pytest.approx((ta + va + aa).item(), rel=1e-10)
    assert parts["ta"].item() == pytest.approx(ta.item(), rel=1e-10)
    assert parts["va"].item() == pytest.approx(va.item(), rel=1e-10)
    assert parts["aa"].item() == pytest.approx(aa.item(), rel=1e-10)
    assert parts["tv"].item() == pytest.approx(inter_modal_nce(tn, vn, 100.0).item(), rel=1e-10)
    assert "tt" not in parts and not parts["ta"].requires_grad
    # normalised inside: rescaling the inputs changes nothing
    total2, _ = loss_fn(2 * t, 0.5 * v, 7 * a, 3 * m)
    assert total2.item() == pytest.approx(total.item(), rel=1e-10)


def test_pretrain_loss_without_intra_modal():
    t, v, a, m = _features(seed=1)
    total, parts = PretrainLoss(intra_modal=False)(t, v, a)
    assert total.item() == pytest.approx((parts["ta"] + parts["va"]).item(), rel=1e-10)
    assert "aa" not in parts


def test_pretrain_loss_text_video_option_adds_the_tv_term_with_gradients():
    t, v, a, m = _features(seed=2)
    t.requires_grad_(True)
    off, parts_off = PretrainLoss(intra_modal=True)(t, v, a, m)
    on, parts_on = PretrainLoss(intra_modal=True, text_video=True)(t, v, a, m)
    tv = inter_modal_nce(F.normalize(t, dim=-1), F.normalize(v, dim=-1), 100.0)
    assert parts_on["tv"].item() == pytest.approx(tv.item(), rel=1e-10)
    assert on.item() == pytest.approx((off + tv).item(), rel=1e-10)
    (g_on,) = torch.autograd.grad(on, t)
    (g_off,) = torch.autograd.grad(off, t)
    assert not torch.allclose(g_on, g_off)


def test_pretrain_loss_ref_extras():
    t, v, a, m = _features(seed=2)
    total, parts = PretrainLoss(intra_modal=True, ref_extras=True)(t, v, a, m)
    tn, vn = F.normalize(t, dim=-1), F.normalize(v, dim=-1)
    tt = self_similarity_nce(tn, 100.0)
    vv = self_similarity_nce(vn, 100.0)
    assert parts["tt"].item() == pytest.approx(tt.item(), rel=1e-10)
    assert parts["vv"].item() == pytest.approx(vv.item(), rel=1e-10)
    expected = parts["ta"] + 2 * parts["va"] + parts["aa"] + parts["tt"] + parts["vv"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-10)
    # REF adds tt/vv only together with its self-supervised (intra-modal) loss
    total_no_intra, parts_no_intra = PretrainLoss(intra_modal=False, ref_extras=True)(t, v, a)
    assert "tt" not in parts_no_intra
    assert total_no_intra.item() == pytest.approx((parts["ta"] + 2 * parts["va"]).item(), rel=1e-10)


def test_pretrain_loss_gradients_reach_features_and_learnable_scale():
    t, v, a, m = _features(seed=3)
    a.requires_grad_(True)
    m.requires_grad_(True)
    loss_fn = PretrainLoss(learnable_scale=True)
    total, parts = loss_fn(t, v, a, m)
    total.backward()
    assert a.grad.abs().sum() > 0 and m.grad.abs().sum() > 0
    assert loss_fn.logit_scale.log_scale.grad is not None
    assert parts["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_pretrain_loss_half_precision_features_are_upcast():
    t, v, a, m = (x.float() for x in _features(seed=4))
    ref, _ = PretrainLoss()(t, v, a, m)
    half, _ = PretrainLoss()(t.bfloat16(), v.bfloat16(), a.bfloat16(), m.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(ref.item(), rel=0.05)


def test_pretrain_loss_input_errors():
    t, v, a, m = _features()
    with pytest.raises(ValueError, match="masked_audio"):
        PretrainLoss(intra_modal=True)(t, v, a)
    with pytest.raises(ValueError, match=r"video \(5, 5\) vs audio \(6, 5\)"):
        PretrainLoss()(t, v[:5], a, m)
    with pytest.raises(ValueError, match="masked_audio"):
        PretrainLoss()(t, v, a, m[:, :4])


# ------------------------------------------------------------------------------- valid-row mask
VALID = torch.tensor([True, False, True, True, False, True])


def test_valid_mask_equals_dropping_the_rows():
    x, y = unit_rows(6, 4, 8), unit_rows(6, 4, 9)
    sub = VALID.nonzero().squeeze(1)
    assert inter_modal_nce(x, y, 5.0, valid=VALID).item() == pytest.approx(
        inter_modal_nce(x[sub], y[sub], 5.0).item(), abs=1e-12
    )
    assert intra_modal_nce(x, y, 5.0, valid=VALID).item() == pytest.approx(
        intra_modal_nce(x[sub], y[sub], 5.0).item(), abs=1e-12
    )
    # all valid is the same as no mask
    assert inter_modal_nce(x, y, 5.0, valid=torch.ones(6, dtype=torch.bool)).item() == pytest.approx(
        inter_modal_nce(x, y, 5.0).item(), abs=1e-12
    )


@pytest.mark.parametrize("ref_extras", [False, True])
def test_pretrain_loss_ignores_invalid_rows_even_nan(ref_extras):
    feats = _features(n=6, seed=5)
    sub = VALID.nonzero().squeeze(1)
    poisoned = []
    for f in feats:
        f = f.clone()
        f[~VALID] = float("nan")  # what an unreadable clip might carry
        poisoned.append(f.requires_grad_(True))
    subset = [f[sub].clone().requires_grad_(True) for f in feats]
    loss_fn = PretrainLoss(intra_modal=True, ref_extras=ref_extras)
    total, parts = loss_fn(*poisoned, valid=VALID)
    expected, expected_parts = loss_fn(*subset)
    assert total.item() == pytest.approx(expected.item(), abs=1e-10)
    assert set(parts) == set(expected_parts)
    total.backward()
    expected.backward()
    for f, s in zip(poisoned, subset):
        assert torch.isfinite(f.grad).all()
        assert torch.equal(f.grad[~VALID], torch.zeros_like(f.grad[~VALID]))
        torch.testing.assert_close(f.grad[sub], s.grad, atol=1e-12, rtol=0)


def test_pretrain_loss_no_valid_row_is_zero_with_finite_grads():
    feats = [f.requires_grad_(True) for f in _features(n=3, seed=6)]
    total, _ = PretrainLoss()(*feats, valid=torch.zeros(3, dtype=torch.bool))
    assert total.item() == 0.0
    total.backward()
    assert all(torch.equal(f.grad, torch.zeros_like(f)) for f in feats)


def test_bad_valid_mask_is_a_clear_error():
    t, v, a, m = _features(n=6)
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \(6,\), got torch.float32"):
        PretrainLoss()(t, v, a, m, valid=torch.ones(6))
    with pytest.raises(ValueError, match=r"shape \(6,\).*\(5,\)"):
        inter_modal_nce(t, v, 1.0, valid=torch.ones(5, dtype=torch.bool))
