"""Retrieval metrics: golden parity on tie-free matrices, the tie rule, multi-caption ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clip4vla.evaluation.retrieval import format_metrics, retrieval_metrics, video_to_text_metrics

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "retrieval_metrics.json").read_text())
CASES = {c["name"]: c for c in GOLDEN["cases"]}
TIE_FREE = ["rand10", "rand50_diag"]


def brute_force_counts(sim: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: #targets strictly above the ground truth, #targets equal to it (itself included)."""
    higher, equal = [], []
    for row, t in zip(sim, target):
        higher.append(int((row > row[t]).sum()))
        equal.append(int((row == row[t]).sum()))
    return np.array(higher), np.array(equal)


def test_fixture_cases_present():
    assert set(CASES) == {"rand10", "rand50_diag", "rand100", "rand100_diag", "ties50"}
    for name in TIE_FREE:
        assert CASES[name]["n_rank_entries_t2v"] == CASES[name]["n_rank_entries_v2t"] == len(CASES[name]["matrix"])


@pytest.mark.parametrize("name", TIE_FREE)
def test_golden_tie_free_exact(name: str):
    case = CASES[name]
    x = np.array(case["matrix"])
    results = {
        "t2v": retrieval_metrics(x),
        "v2t": video_to_text_metrics(x),
    }
    # v2t is also just the transposed matrix with the diagonal ground truth.
    transposed = retrieval_metrics(x.T)
    assert torch.equal(transposed["ranks"], results["v2t"]["ranks"])
    for direction, ours in results.items():
        ref = case[direction]
        for k in ("R1", "R5", "R10"):
            assert ours[k] == ref[k], (direction, k)
        assert ours["MedR"] == ref["MR"] == ref["MedianR"]
        assert abs(ours["MeanR"] - ref["MeanR"]) <= 1e-12
        # REF "cols" are 0-based positions; ours are 1-based ranks.
        assert ours["ranks"].dtype == torch.float64
        assert (ours["ranks"] - 1).tolist() == ref["cols"]


@pytest.mark.parametrize("name", TIE_FREE)
def test_golden_tie_free_fractions_clip4vla(name: str):
    case = CASES[name]
    x = np.array(case["matrix"])
    for direction, ours in (("t2v", retrieval_metrics(x, percent=False)), ("v2t", video_to_text_metrics(x, percent=False))):
        ref = case[f"clip4vla_{direction}"]
        for k in ("R1", "R5", "R10"):
            assert ours[k] == ref[k], (direction, k)
        assert ours["MedR"] == ref["MR"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_tie_expansion_explains_all_cases(name: str):
    """REF emits every tied position; ours is their average, plus one (1-based).

    Expanding each query into positions [higher, higher + equal) reproduces the reference
    ``cols`` exactly for all five cases (ties included), which pins our tie counting to the
    reference's notion of a tie; our rank must then be the mean of that range + 1.
    """
    case = CASES[name]
    x = np.array(case["matrix"])
    for direction, sim in (("t2v", x), ("v2t", x.T)):
        higher, equal = brute_force_counts(sim, np.arange(len(sim)))
        expanded = [p for h, e in zip(higher, equal) for p in range(h, h + e)]
        assert expanded == case[direction]["cols"]
        assert len(expanded) == case[f"n_rank_entries_{direction}"]
        ours = retrieval_metrics(sim)["ranks"].numpy()
        np.testing.assert_array_equal(ours, 1 + higher + (equal - 1) / 2)


def test_ties_hand_computed():
    sim = torch.tensor([[1.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, 2.0, 1.0]])
    # row 0: tied with 1 other -> 1.5; row 1: tied with 2 others -> 2; row 2: one higher -> 2.
    m = retrieval_metrics(sim)
    assert m["ranks"].tolist() == [1.5, 2.0, 2.0]
    assert m["R1"] == 0.0  # 1.5 > 1: a shared first place is not an R@1 hit
    assert m["R5"] == m["R10"] == 100.0
    assert m["MedR"] == 2.0
    assert m["MeanR"] == pytest.approx(5.5 / 3, abs=1e-15)
    # one higher and two tied others -> 1 + 1 + 1
    assert retrieval_metrics(torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]]), torch.tensor([2]))["ranks"].tolist() == [3.0]
    # an all-equal row of 4 sits in the middle: 2.5
    assert retrieval_metrics(torch.zeros(4, 4))["ranks"].tolist() == [2.5] * 4


def test_even_median_averages_middle_values():
    # ranks 1, 2, 3, 4 -> numpy median 2.5 (torch.median would say 2)
    sim = torch.tensor([[4.0, 3, 2, 1], [4.0, 3, 2, 1], [4.0, 3, 2, 1], [4.0, 3, 2, 1]])
    m = retrieval_metrics(sim)
    assert m["ranks"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert m["MedR"] == 2.5 and m["MeanR"] == 2.5
    assert m["R1"] == 25.0 and m["R5"] == 100.0


MULTI_SIM = torch.tensor(
    [
        [0.9, 0.1, 0.2],  # t0 -> v0
        [0.3, 0.8, 0.1],  # t1 -> v0
        [0.2, 0.7, 0.7],  # t2 -> v1
        [0.1, 0.6, 0.5],  # t3 -> v1
        [0.4, 0.9, 0.3],  # t4 -> v2
        [0.5, 0.5, 0.5],  # t5 -> v2
    ]
)
MULTI_MAP = torch.tensor([0, 0, 1, 1, 2, 2])


def test_multi_caption_text_to_video_hand_computed():
    m = retrieval_metrics(MULTI_SIM, MULTI_MAP)
    assert m["ranks"].tolist() == [1.0, 2.0, 1.5, 1.0, 3.0, 2.0]
    assert m["R1"] == 2 * 100.0 / 6
    assert m["R5"] == 100.0
    assert m["MedR"] == 1.75
    assert m["MeanR"] == pytest.approx(1.75, abs=1e-15)


def test_multi_caption_video_to_text_best_caption_rule():
    m = video_to_text_metrics(MULTI_SIM, MULTI_MAP)
    # v0: best own caption t0 (0.9) is top -> 1.
    # v1: best own t2 (0.7); t4 (0.9) and t1 (0.8) above -> 3.
    # v2: best own t5 (0.5); t2 (0.7) above, t3 (0.5) tied; own t5 not counted -> 2.5.
    assert m["ranks"].tolist() == [1.0, 3.0, 2.5]
    assert m["R1"] == 100.0 / 3
    assert m["MedR"] == 2.5
    assert m["MeanR"] == pytest.approx(6.5 / 3, abs=1e-15)
    # Own captions tied for best do not push each other down.
    own_tie = video_to_text_metrics(torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.1, 0.9]]), torch.tensor([0, 0, 1]))
    assert own_tie["ranks"].tolist() == [1.0, 1.0]


def test_single_caption_mapping_is_a_permutation_of_the_diagonal():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(40, 40, generator=g)
    perm = torch.randperm(40, generator=g)
    # Reorder the texts: row i is original text perm[i], whose video is perm[i].
    rows = sim[perm]
    t2v = retrieval_metrics(rows, perm)
    assert torch.equal(t2v["ranks"], retrieval_metrics(sim)["ranks"][perm])
    # Each video still has exactly one caption, so v2t is the plain transposed rule.
    v2t = video_to_text_metrics(rows, perm)
    assert torch.equal(v2t["ranks"], retrieval_metrics(sim.T)["ranks"])


def test_vectorised_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(7)
    n_video, per = 60, 5
    sim = np.round(rng.standard_normal((n_video * per, n_video)), 1).astype(np.float32)  # plenty of ties
    t2v_map = np.repeat(np.arange(n_video), per)
    higher, equal = brute_force_counts(sim, t2v_map)
    ours = retrieval_metrics(sim, torch.from_numpy(t2v_map))
    np.testing.assert_array_equal(ours["ranks"].numpy(), 1 + higher + (equal - 1) / 2)
    # v2t brute force: best own caption, only other videos' captions count against it.
    ranks = []
    for v in range(n_video):
        col = sim[:, v]
        own = t2v_map == v
        best = col[own].max()
        ranks.append(1 + (col[~own] > best).sum() + (col[~own] == best).sum() / 2)
    np.testing.assert_array_equal(video_to_text_metrics(sim, t2v_map)["ranks"].numpy(), np.array(ranks))


def test_numpy_torch_and_dtypes_agree():
    x = np.array(CASES["rand50_diag"]["matrix"])
    a = retrieval_metrics(x)
    b = retrieval_metrics(torch.from_numpy(x))
    c = retrieval_metrics(torch.from_numpy(x).float())
    d = retrieval_metrics((x * 10_000).round().astype(np.int64))
    for other in (b, c, d):
        assert torch.equal(a["ranks"], other["ranks"])
        assert all(a[k] == other[k] for k in ("R1", "R5", "R10", "MedR", "MeanR"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_input():
    x = torch.tensor(CASES["rand10"]["matrix"])
    assert torch.equal(retrieval_metrics(x.cuda())["ranks"], retrieval_metrics(x)["ranks"])
    assert torch.equal(video_to_text_metrics(MULTI_SIM.cuda(), MULTI_MAP)["ranks"], torch.tensor([1.0, 3.0, 2.5], dtype=torch.float64))


def test_format_metrics():
    m = {"R1": 12.345, "R5": 34.5, "R10": 45.61, "MedR": 4.0, "MeanR": 7.123, "ranks": torch.ones(1)}
    assert format_metrics(m, "t2v") == "t2v R@1 12.3 R@5 34.5 R@10 45.6 MedR 4.0 MeanR 7.1"
    assert format_metrics(m) == "R@1 12.3 R@5 34.5 R@10 45.6 MedR 4.0 MeanR 7.1"
    assert format_metrics(retrieval_metrics(torch.eye(3)), "v2t") == "v2t R@1 100.0 R@5 100.0 R@10 100.0 MedR 1.0 MeanR 1.0"
    with pytest.raises(KeyError, match="MeanR"):
        format_metrics({"R1": 1, "R5": 1, "R10": 1, "MedR": 1})


def test_errors_are_clear():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"2-D.*\(4,\)"):
        retrieval_metrics(torch.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        retrieval_metrics(torch.zeros(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"outside \[0, 3\): \[3\]"):
        retrieval_metrics(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="bool"):
        retrieval_metrics(torch.eye(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="list"):
        retrieval_metrics([[1.0, 0.0], [0.0, 1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"without any caption.*\[2\]"):
        video_to_text_metrics(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]))


# ------------------------------------------------------------- streamed (chunked) evaluation
def test_streamed_metrics_equal_the_full_matrix_with_ties_and_multiple_captions():
    from clip4vla.evaluation.retrieval import streamed_retrieval_metrics

    g = torch.Generator().manual_seed(0)
    for n_text, n_video, per_video in ((40, 40, 1), (90, 30, 3), (37, 11, None)):
        sim = torch.randint(0, 5, (n_text, n_video), generator=g).float()  # many ties
        mapping = None if per_video == 1 else (torch.arange(n_text) % n_video)
        full_t2v, full_v2t = retrieval_metrics(sim, mapping), video_to_text_metrics(sim, mapping)
        for rows, cache in ((1, 0), (7, 0), (7, 10**9), (n_text, 0)):  # recomputed or cached second pass
            t2v, v2t = streamed_retrieval_metrics(lambda r: sim[r], n_text, n_video, mapping, rows_per_chunk=rows,
                                                  cache_elements=cache)
            assert torch.equal(t2v["ranks"], full_t2v["ranks"]) and torch.equal(v2t["ranks"], full_v2t["ranks"])
            assert {k: t2v[k] for k in ("R1", "R5", "R10", "MedR", "MeanR")} == \
                {k: full_t2v[k] for k in ("R1", "R5", "R10", "MedR", "MeanR")}


@pytest.mark.parametrize("name", TIE_FREE)
def test_streamed_metrics_match_the_golden_fixture(name: str):
    from clip4vla.evaluation.retrieval import streamed_retrieval_metrics

    case = CASES[name]
    x = torch.tensor(case["matrix"], dtype=torch.float64)
    t2v, v2t = streamed_retrieval_metrics(lambda r: x[r], *x.shape, rows_per_chunk=3)
    for direction, ours in (("t2v", t2v), ("v2t", v2t)):
        for k in ("R1", "R5", "R10"):
            assert ours[k] == case[direction][k], (direction, k)
        assert ours["MedR"] == case[direction]["MedianR"]
        assert (ours["ranks"] - 1).tolist() == case[direction]["cols"]


def test_streamed_metrics_refuse_bad_scores():
    from clip4vla.evaluation.retrieval import streamed_retrieval_metrics

    sim = torch.randn(6, 6)
    sim[4, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        streamed_retrieval_metrics(lambda r: sim[r], 6, 6)
    with pytest.raises(ValueError, match="gave shape"):
        streamed_retrieval_metrics(lambda r: torch.zeros(r.stop - r.start, 5), 6, 6)
    with pytest.raises(ValueError, match="text_to_video must have shape"):
        streamed_retrieval_metrics(lambda r: torch.zeros(r.stop - r.start, 6), 6, 6, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot rank 0 texts"):
        streamed_retrieval_metrics(lambda r: torch.zeros(0, 6), 0, 6)
    with pytest.raises(ValueError, match="videos without any caption"):
        streamed_retrieval_metrics(lambda r: torch.zeros(r.stop - r.start, 3), 4, 3, torch.tensor([0, 0, 1, 1]))
