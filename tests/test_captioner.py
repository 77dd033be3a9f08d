"""The Multimodal Caption Generator: mask, tied head, cached decoding, model files, targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clip4vla.data.dataset import IGNORE_INDEX, caption_pair
from clip4vla.models.captioner import CaptionGenerator
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.decoding import EOT, SOT, generate
from clip4vla.text import default_tokenizer

MAX_WORDS = 12
D = 64


@pytest.fixture(scope="module")
def model() -> CLIP4VLA:
    torch.manual_seed(0)
    m = CLIP4VLA.from_config(CLIPConfig.micro())
    m.attach_head("caption", CaptionGenerator.from_clip(m.clip, MAX_WORDS, layers=2))
    with torch.no_grad():  # a bias that favours a few words, so decoding makes real choices
        m.heads["caption"].bias[:] = torch.randn(49408) * 3
    return m.eval()


def items(b: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    frames, segments = torch.randn(b, 3, D, generator=g), torch.randn(b, 2, D, generator=g)
    frame_mask = torch.tensor([[True, True, False]] * b)
    segment_mask = torch.tensor([[True, True]] + [[False, False]] * (b - 1))  # the second clip is silent
    return frames, frame_mask, segments, segment_mask


def prefix(model, tokens):
    return model.encode_text_tokens(tokens)[0]


def logits_of(model, tokens, frames, fmask, segs, smask):
    head = model.heads["caption"]
    mask = torch.ones_like(tokens, dtype=torch.bool)
    return head(prefix(model, tokens), mask, frames, fmask, segs, smask, model.clip.token_embedding.weight)


def test_text_rows_are_causal_and_see_the_video(model):
    frames, fmask, segs, smask = items()
    tokens = torch.tensor([[SOT, 320, 1125, 593, 518], [SOT, 320, 1125, 593, 518]])
    with torch.no_grad():
        base = logits_of(model, tokens, frames, fmask, segs, smask)
        later = tokens.clone()
        later[:, 3:] = 700
        changed_future = logits_of(model, later, frames, fmask, segs, smask)
        moved = logits_of(model, tokens, frames + 1.0, fmask, segs, smask)
        padded = frames.clone()
        padded[:, 2] = 1e3  # the masked third frame
        padded_only = logits_of(model, tokens, padded, fmask, segs, smask)
    torch.testing.assert_close(changed_future[:, :3], base[:, :3], atol=1e-4, rtol=1e-4)  # no peeking ahead
    assert not torch.allclose(changed_future[:, 3:], base[:, 3:])
    assert not torch.allclose(moved, base)  # the words depend on what is seen
    torch.testing.assert_close(padded_only, base, atol=1e-4, rtol=1e-4)  # not on padding
    assert base.shape == (2, 5, 49408)


def test_the_head_is_tied_to_the_clip_token_embedding(model):
    head = model.heads["caption"]
    hidden = torch.randn(3, D)
    expected = head.transform(hidden) @ model.clip.token_embedding.weight.T + head.bias
    torch.testing.assert_close(head.logits(hidden, model.clip.token_embedding.weight), expected)
    assert not any(p is model.clip.token_embedding.weight for p in head.parameters())  # shared, not copied
    assert {"transform.dense.weight", "transform.LayerNorm.weight", "bias"} <= set(dict(head.named_parameters()))


def test_cached_steps_give_the_uncached_logits(model):
    frames, fmask, segs, smask = items()
    tokens = torch.tensor([[SOT, 320, 1125, 593, 518, 2368], [SOT, 518, 320, 1125, 2368, 593]])
    head = model.heads["caption"]
    with torch.no_grad():
        full = logits_of(model, tokens, frames, fmask, segs, smask)
        state = head.start(frames, fmask, segs, smask)
        steps = []
        for t in range(tokens.shape[1]):
            features, state.tower = model.clip.forward_features_cached(tokens[:, t:t + 1], state.tower)
            logits, state = head.step(features @ model.clip.text_projection, state, model.clip.token_embedding.weight)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("beam", [1, 3])
def test_cached_and_uncached_decoding_choose_the_same_words(model, beam):
    frames, fmask, segs, smask = items(b=3, seed=5)
    fmask[2] = True
    cached = generate(model, frames, fmask, segs, smask, beam=beam, max_words=MAX_WORDS, cached=True)
    uncached = generate(model, frames, fmask, segs, smask, beam=beam, max_words=MAX_WORDS, cached=False)
    assert cached == uncached
    assert all(len(words) <= MAX_WORDS - 1 and EOT not in words and SOT not in words for words in cached)
    assert any(len(words) > 0 for words in cached)


@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_beam_search_scores_at_least_as_well_as_greedy(model, penalty):
    frames, fmask, segs, smask = items(b=2, seed=7)
    head = model.heads["caption"]

    def log_prob(words: list[int], row: int) -> float:
        tokens = torch.tensor([[SOT] + words])
        with torch.no_grad():
            logits = logits_of(model, tokens, frames[row:row + 1], fmask[row:row + 1], segs[row:row + 1], smask[row:row + 1])
        logp = torch.log_softmax(logits[0], dim=-1)
        total = float(sum(logp[i, t] for i, t in enumerate(words + [EOT])))
        return total / (len(words) + 1) ** penalty

    greedy = generate(model, frames, fmask, segs, smask, beam=1, max_words=MAX_WORDS)
    beam = generate(model, frames, fmask, segs, smask, beam=4, max_words=MAX_WORDS, length_penalty=penalty)
    for row in range(2):
        assert log_prob(beam[row], row) >= log_prob(greedy[row], row) - 1e-4
    assert head.config.max_words == MAX_WORDS


def test_caption_head_survives_the_model_file(model, tmp_path):
    from clip4vla import load_model
    from clip4vla.models.checkpoints import export_model
    from clip4vla.models.preprocessing import Preprocessing

    path = export_model(model, tmp_path / "model", Preprocessing(max_words=MAX_WORDS))
    loaded = load_model(path)
    frames, fmask, segs, smask = items()
    assert generate(loaded, frames, fmask, segs, smask, beam=2) == generate(model, frames, fmask, segs, smask, beam=2)
    # the tie survives too: the head reads the loaded model's token embedding
    assert loaded.heads["caption"].config == model.heads["caption"].config


def test_released_caption_checkpoint_is_converted(model, tmp_path):
    from clip4vla import load_model

    head = model.heads["caption"]
    ref = {f"clip.{k}": v.clone() for k, v in model.clip.state_dict().items()}
    ref["clip.token_embedding.weight"] = torch.cat([ref["clip.token_embedding.weight"], torch.zeros(3, D)])
    ref.update({f"audio.visual.{k}": v.clone() for k, v in model.audio.visual.state_dict().items()})
    ref["audio.visual.control_embedding"] = model.audio.type_embedding.detach().clone()
    ref.update({f"cross.{k}": v.clone() for k, v in head.fusion.state_dict().items()})
    ref.update({f"cls.predictions.transform.{k}": v.clone() for k, v in head.transform.state_dict().items()})
    ref["cls.predictions.bias"] = torch.cat([head.bias.detach(), torch.zeros(3)])
    ref["cls.predictions.decoder.weight"] = ref["clip.token_embedding.weight"]
    torch.save(ref, tmp_path / "ref_caption.pt")
    loaded = load_model(tmp_path / "ref_caption.pt")
    assert set(loaded.heads) == {"caption"}
    for key, value in head.state_dict().items():
        torch.testing.assert_close(loaded.heads["caption"].state_dict()[key], value)


def test_teacher_forcing_pairs_and_truncation():
    tokenizer = default_tokenizer()
    words = tokenizer.encode("a red circle moves left")
    inputs, targets, truncated = caption_pair("a red circle moves left", 8)
    assert inputs.tolist() == [SOT] + words + [0] * (8 - 1 - len(words))
    assert targets.tolist() == words + [EOT] + [IGNORE_INDEX] * (8 - 1 - len(words))
    assert not truncated
    inputs, targets, truncated = caption_pair("one two three four five six seven eight nine ten", 6)
    assert truncated and inputs.tolist()[0] == SOT and IGNORE_INDEX not in targets.tolist()
    assert targets.tolist()[-1] == EOT and inputs.tolist()[1:] == targets.tolist()[:-1]


def test_training_loss_ignores_padding_and_learns_a_caption(model):
    """A few steps of teacher forcing on one (video, caption) pair make greedy decoding say it."""
    torch.manual_seed(0)
    m = CLIP4VLA.from_config(CLIPConfig.micro())
    m.attach_head("caption", CaptionGenerator.from_clip(m.clip, MAX_WORDS, layers=1))
    frames, fmask, segs, smask = items(b=1)
    inputs, targets, _ = caption_pair("a red circle", MAX_WORDS)
    optimizer = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(60):
        logits = m.heads["caption"](prefix(m, inputs[None]), (targets != IGNORE_INDEX)[None], frames, fmask, segs, smask,
                                    m.clip.token_embedding.weight)
        loss = F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    m.eval()
    said = generate(m, frames, fmask, segs, smask, beam=1, max_words=MAX_WORDS)[0]
    assert default_tokenizer().decode(said).strip() == "a red circle", loss.item()
