"""Caption decoding: greedy and beam search, batched over videos and beams, with or without a cache.

``cached=True`` (default) runs each new token once through the CLIP text tower and the caption
generator's fusion layers, reusing every earlier token's keys and values and the frames' and
segments' (``CaptionGenerator.start`` / ``step``). ``cached=False`` re-encodes the whole prefix
every step, as a plain implementation would; both choose the same tokens (the tests check it).

Beam search keeps ``beam`` hypotheses per video. A hypothesis ends at [EOT] (its score is frozen)
or after ``max_words`` predictions: a caption has at most ``max_words - 1`` words, as in training. The best ending is chosen by
``score / length ** length_penalty`` (0: the plain log-probability).
"""

from __future__ import annotations

import torch

from clip4vla.models.captioner import CaptionGenerator, CaptionState
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
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    state = head.start(frames, frame_mask, segments, segment_mask) if cached else None
    embedding = model.clip.token_embedding.weight
    for _ in range(max_words):
        if cached:
            features, state.tower = model.clip.forward_features_cached(tokens[:, -1:], state.tower)
            logits, state = head.step(_project(model, features), state, embedding)
            logits = logits[:, -1]
        else:
            prefix = _project(model, model.clip.forward_features(tokens))
            mask = torch.ones_like(tokens, dtype=torch.bool)
            logits = head(prefix, mask, frames, frame_mask, segments, segment_mask, embedding)[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
        # an ended hypothesis continues only with [EOT], at no cost (its score stays as it was)
        logp[finished] = float("-inf")
        logp[finished, EOT] = 0.0
        candidates = (scores[:, None] + logp).view(b, beam * logp.shape[1])
        best, flat = candidates.topk(beam, dim=1)  # [B, beam]
        source = (flat // logp.shape[1] + torch.arange(b, device=device)[:, None] * beam).view(n)
        word = (flat % logp.shape[1]).view(n)
        tokens = torch.cat([tokens[source], word[:, None]], dim=1)
        was_finished = finished[source]
        lengths = torch.where(was_finished, lengths[source], lengths[source] + 1)
        finished = was_finished | (word == EOT)
        scores = best.view(n)
        if state is not None:
            state = state.select(source)
        if bool(finished.all()):
            break
    ranked = (scores / lengths.clamp(min=1).float() ** length_penalty).view(b, beam)
    choice = ranked.argmax(dim=1) + torch.arange(b, device=device) * beam
    out = []
    for row in tokens[choice].tolist():
        words = row[1:]
        # training never shows more than max_words - 1 words (the last slot is [EOT])
        out.append(words[: words.index(EOT)] if EOT in words else words[: max_words - 1])
    return out
