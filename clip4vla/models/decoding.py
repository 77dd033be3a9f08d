"""Caption decoding: greedy and beam search, batched over videos and beams, with or without a cache.

``cached=True`` (default) runs each new token once through the CLIP text tower and the caption
generator's fusion layers, reusing every earlier token's keys and values and the frames' and
segments' (``CaptionGenerator.start`` / ``step``). ``cached=False`` re-encodes the whole prefix
every step, as a plain implementation would; both choose the same tokens (the tests check it).

Beam search keeps ``beam`` live hypotheses per video. A hypothesis that ends ([EOT] among the best
``beam`` continuations) leaves the beam for a per-video pool of finished captions, scored by
``log-probability / length ** length_penalty`` (0: the plain log-probability; length counts the
[EOT]); the beam goes on with the best continuations that do not end, so short finished captions
never crowd out the longer ones still being built. The ``max_words``-th prediction can only be
[EOT] (a caption has at most ``max_words - 1`` words, as in training). A video is done when no
live hypothesis can still beat its best finished caption (log-probabilities only fall); with
``beam=1`` and no length penalty this is greedy decoding.
"""

from __future__ import annotations

import torch

from clip4vla.models.captioner import CaptionGenerator
from clip4vla.models.clip4vla import CLIP4VLA

__all__ = ["SOT", "EOT", "generate"]

SOT, EOT = 49406, 49407


def _project(model: CLIP4VLA, features: torch.Tensor) -> torch.Tensor:
    return features @ model.clip.text_projection.to(features.dtype)


@torch.no_grad()
def generate(
    model: CLIP4VLA,
    frames: torch.Tensor,  # [B, F, D] frame features (encode_video)
    frame_mask: torch.Tensor,  # [B, F]
    segments: torch.Tensor,  # [B, L, D] segment features (encode_audio)
    segment_mask: torch.Tensor,  # [B, L]
    beam: int = 5,
    max_words: int | None = None,
    length_penalty: float = 0.0,
    cached: bool = True,
) -> list[list[int]]:
    """The best caption of every video as BPE ids (no [SOT]/[EOT]); ``beam=1`` is greedy."""
    head: CaptionGenerator = model.heads["caption"]
    max_words = max_words or head.config.max_words
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    b, device = frames.shape[0], frames.device
    n = b * beam
    expand = lambda t: t.repeat_interleave(beam, dim=0)  # noqa: E731
    frames, frame_mask, segments, segment_mask = expand(frames), expand(frame_mask), expand(segments), expand(segment_mask)
    tokens = torch.full((n, 1), SOT, dtype=torch.long, device=device)
    scores = torch.zeros(b, beam, device=device)
    scores[:, 1:] = float("-inf")  # at the start all beams are the same prefix: expand one
    scores = scores.view(n)
    offsets = torch.arange(b, device=device)[:, None] * beam
    best_score = torch.full((b,), float("-inf"), device=device)  # of the best ended caption per video
    best_words: list[list[int]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    state = head.start(frames, frame_mask, segments, segment_mask) if cached else None
    embedding = model.clip.token_embedding.weight
    for step in range(max_words):
        if cached:
            features, state.tower = model.clip.forward_features_cached(tokens[:, -1:], state.tower)
            logits, state = head.step(_project(model, features), state, embedding)
            logits = logits[:, -1]
        else:
            prefix = _project(model, model.clip.forward_features(tokens))
            mask = torch.ones_like(tokens, dtype=torch.bool)
            logits = head(prefix, mask, frames, frame_mask, segments, segment_mask, embedding)[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
        vocab = logp.shape[1]
        if step == max_words - 1:  # the last slot: training never shows more than max_words - 1 words
            logp = torch.where(torch.arange(vocab, device=device) == EOT, logp, torch.full_like(logp, float("-inf")))
        top, flat = (scores[:, None] + logp).view(b, beam * vocab).topk(2 * beam, dim=1)  # [B, 2 beam]
        source, word = flat // vocab + offsets, flat % vocab
        ends = word == EOT
        # an ending among the best `beam` candidates is a finished caption (scored with its length)
        ended = torch.where(ends, top / float(step + 1) ** length_penalty, float("-inf"))
        ended[:, beam:] = float("-inf")
        candidate, rank = ended.max(dim=1)
        better = (candidate > best_score) & ~done
        for i in better.nonzero().flatten().tolist():
            best_words[i] = tokens[source[i, rank[i]], 1:].tolist()
        best_score = torch.where(better, candidate, best_score)
        # the best `beam` candidates that do not end live on (at most `beam` of the 2 beam end)
        keep = (ends.long() * 2 * beam + torch.arange(2 * beam, device=device)).argsort(dim=1)[:, :beam]
        chosen = source.gather(1, keep).view(n)
        scores = top.gather(1, keep).view(n)
        tokens = torch.cat([tokens[chosen], word.gather(1, keep).view(n, 1)], dim=1)
        if state is not None:
            state = state.select(chosen)
        # log-probabilities only fall: no live caption can end above raw score / max_words ** penalty
        bound = scores.view(b, beam).max(dim=1).values / float(max_words) ** length_penalty
        done |= best_score >= bound
        if bool(done.all()):
            break
    return best_words
