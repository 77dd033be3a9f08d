"""Retrieval fusion heads (G2G / G2L / L2L) and the retrieval loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip4vla.losses import RetrievalLoss
from clip4vla.models.clip import CLIP, CLIPConfig
from clip4vla.models.fusion import FusionHead, FusionTransformer
from clip4vla.models.pooling import masked_mean_normalised

D = 64


@pytest.fixture(scope="module")
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(CLIPConfig.micro())


def items(b: int, f: int = 3, segs: int = 2, seed: int = 1, silent: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    frames, segments = torch.randn(b, f, D, generator=g), torch.randn(b, segs, D, generator=g)
    frame_mask = torch.ones(b, f, dtype=torch.bool)
    frame_mask[0, -1] = False  # a padded frame
    segment_mask = torch.ones(b, segs, dtype=torch.bool)
    segment_mask[list(silent)] = False
    return frames, frame_mask, segments, segment_mask


def texts(n: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, 8, dtype=torch.long)
    for i in range(n):
        length = 3 + i % 4
        tokens[i, :length] = torch.randint(1, 49405, (length,), generator=g)
        tokens[i, 0], tokens[i, length] = 49406, 49407
    return tokens, torch.randn(n, 8, D, generator=g), torch.randn(n, D, generator=g)


def test_g2g_is_the_unnormalised_average_and_silent_clips_use_vision(clip):
    head = FusionHead.from_clip(clip, "g2g")
    frames, fmask, segs, smask = items(4, silent=(2,))
    tokens, tok_feats, text_global = texts(3)
    text = head.text_side(tokens, tok_feats, text_global)
    video = head.video_side(frames, fmask, segs, smask, "av")
    v, a = masked_mean_normalised(frames, fmask), masked_mean_normalised(segs, smask)
    expected = torch.stack([(v[i] + a[i]) / 2 if i != 2 else v[i] for i in range(4)])
    torch.testing.assert_close(video["video"], expected)
    assert not torch.allclose(expected[0].norm(), torch.tensor(1.0))  # not re-normalised
    sim = head.similarity(text, video, 100.0)
    torch.testing.assert_close(sim, 100.0 * F.normalize(text_global, dim=-1) @ expected.T)
    torch.testing.assert_close(head.video_side(frames, fmask, segs, smask, "v")["video"], v)
    torch.testing.assert_close(head.video_side(frames, fmask, segs, smask, "a")["video"], a)
    assert sum(p.numel() for p in head.parameters()) == 0


def test_g2l_starts_from_clip_text_blocks_and_ignores_padding(clip):
    head = FusionHead.from_clip(clip, "g2l", layers=1)
    block, source = head.fusion.transformer.resblocks[0], clip.transformer.resblocks[0]
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), source.state_dict().values()))
    assert torch.equal(head.fusion.positional_embedding, clip.positional_embedding[:77])
    frames, fmask, segs, smask = items(2)
    out = head.video_side(frames, fmask, segs, smask, "av")["video"]
    # changing what sits in the padded frame changes nothing
    frames2 = frames.clone()
    frames2[0, -1] = 1e3
    torch.testing.assert_close(head.video_side(frames2, fmask, segs, smask, "av")["video"], out)
    # vision only: the audio features play no part
    v1 = head.video_side(frames, fmask, segs, smask, "v")["video"]
    v2 = head.video_side(frames, fmask, segs * 5, smask, "v")["video"]
    torch.testing.assert_close(v1, v2)
    assert not torch.allclose(v1, masked_mean_normalised(frames, fmask))  # the transformer did act


def test_l2l_pairs_are_exact_and_chunking_does_not_matter(clip):
    torch.manual_seed(3)
    head = FusionHead.from_clip(clip, "l2l", layers=1).eval()
    frames, fmask, segs, smask = items(3, silent=(1,))
    tokens, tok_feats, text_global = texts(4)
    text = head.text_side(tokens, tok_feats, text_global)
    video = head.video_side(frames, fmask, segs, smask, "av")
    with torch.no_grad():
        sim = head.similarity(text, video, 10.0)
        small = head.similarity(text, video, 10.0, pair_chunk=1)
        # one pair by hand: [tokens (padding included) ; frames ; segments], types 0/1/2
        i, j = 2, 1
        seq = torch.cat([tok_feats[i], frames[j], segs[j]])[None]
        types = torch.tensor([[0] * 8 + [1] * 3 + [2] * 2])
        mask = torch.cat([tokens[i] != 0, fmask[j], smask[j]])[None]
        by_hand = 10.0 * head.similarity_dense(head.fusion(seq, types, mask)[:, 0])
    assert sim.shape == (4, 3)
    torch.testing.assert_close(small, sim, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sim[i, j], by_hand[0, 0], atol=1e-5, rtol=1e-5)


def test_an_all_padding_sequence_stays_finite(clip):
    fusion = FusionTransformer(D, 1, 1, 77)
    x = torch.randn(2, 4, D)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    out = fusion(x, torch.zeros(2, 4, dtype=torch.long), mask)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["g2g", "g2l", "l2l"])
def test_retrieval_loss_is_the_symmetric_nce_of_the_full_matrix(clip, mode):
    torch.manual_seed(4)
    head = FusionHead.from_clip(clip, mode, layers=1)
    frames, fmask, segs, smask = items(4)
    tokens, tok_feats, text_global = texts(4)
    text = head.text_side(tokens, tok_feats, text_global)
    video = head.video_side(frames, fmask, segs, smask, "av")
    loss_fn = RetrievalLoss(head, train_head=mode == "l2l")
    valid = torch.ones(4, dtype=torch.bool)
    total, parts = loss_fn(text, video, valid, torch.arange(4))
    sim = head.similarity(text, video, 100.0)
    target = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-5)
    t2v, _ = RetrievalLoss(head, direction="t2v", train_head=mode == "l2l")(text, video, valid, torch.arange(4))
    torch.testing.assert_close(t2v, F.cross_entropy(sim, target), atol=1e-4, rtol=1e-5)
    if mode == "l2l":
        total.backward()
        assert head.similarity_dense.weight.grad is not None and head.similarity_dense.weight.grad.abs().sum() > 0
        assert set(dict(loss_fn.named_parameters())) >= {"head.similarity_dense.weight"}
    else:
        assert not any(n.startswith("head") for n, _ in loss_fn.named_parameters())


def test_retrieval_loss_leaves_out_same_video_rows_and_invalid_rows(clip):
    head = FusionHead.from_clip(clip, "g2g")
    frames, fmask, segs, smask = items(4)
    tokens, tok_feats, text_global = texts(4)
    text = head.text_side(tokens, tok_feats, text_global)
    video = head.video_side(frames, fmask, segs, smask, "av")
    sim = head.similarity(text, video, 100.0)
    # rows 0 and 1 are two captions of one video: neither is the other's negative; row 3 unreadable
    index, valid = torch.tensor([7, 7, 8, 9]), torch.tensor([True, True, True, False])
    total, _ = RetrievalLoss(head)(text, video, valid, index)
    keep = sim[:3, :3].clone()
    keep[0, 1] = keep[1, 0] = float("-inf")
    target = torch.arange(3)
    expected = 0.5 * (F.cross_entropy(keep, target) + F.cross_entropy(keep.T, target))
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-5)
