"""Feature-cached accumulation gives the gradient of one big batch (all negatives kept)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from clip4vla.losses import PretrainLoss
from clip4vla.train import grad_cache
from clip4vla.train.grad_cache import cached_accumulation_step

D_IN, D = 6, 5


class Towers(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.text = nn.Linear(D_IN, D)
        self.video = nn.Linear(D_IN, D)
        self.audio = nn.Sequential(nn.Linear(D_IN, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, D))
        self.video.requires_grad_(False)

    def trainable(self, batch):
        return {"text": self.text(batch["text"]), "audio": self.audio(batch["audio"]), "masked_audio": self.audio(batch["masked"])}

    def frozen(self, batch):
        return {"video": self.video(batch["video"])}

    def forward(self, batch):
        return {**self.trainable(batch), **self.frozen(batch)}


def make_batch(n: int, seed: int = 1, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(n, D_IN, generator=g, dtype=dtype)
    return {
        "text": torch.randn(n, D_IN, generator=g, dtype=dtype),
        "video": torch.randn(n, D_IN, generator=g, dtype=dtype),
        "audio": audio,
        "masked": audio * (torch.rand(n, D_IN, generator=g) > 0.3),
    }


def split(batch, k):
    return [{key: v.chunk(k)[i] for key, v in batch.items()} for i in range(k)]


def build(dropout=0.0, dtype=torch.float64):
    """float64 by default: the identity is exact, so it is checked at 1e-10, far below any
    algorithmic error; one test also runs in fp32 at the brief's atol 1e-6."""
    torch.manual_seed(0)
    return Towers(dropout).to(dtype), PretrainLoss(intra_modal=True, init_scale=10.0)


def loss_of(loss_fn):
    return lambda f: loss_fn(text=f["text"], video=f["video"], audio=f["audio"], masked_audio=f["masked_audio"])


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a, b, atol=1e-10):
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.float64, 1e-10)])
def test_accumulated_gradient_equals_big_batch_gradient(dtype, atol):
    batch = make_batch(12, dtype=dtype)
    model, loss_fn = build(dtype=dtype)
    big_loss, _ = loss_of(loss_fn)(model(batch))
    big_loss.backward()
    expected = grads(model)
    assert "audio.0.weight" in expected and "text.weight" in expected and "video.weight" not in expected

    model.zero_grad()
    loss, parts = cached_accumulation_step(model, split(batch, 3), loss_of(loss_fn))
    assert loss.item() == pytest.approx(big_loss.item(), abs=100 * atol)
    assert not loss.requires_grad and set(parts) >= {"ta", "va", "aa"}
    assert_grads_close(grads(model), expected, atol=atol)

    # plain accumulation (loss per micro-batch, averaged) has fewer negatives: a different gradient
    model.zero_grad()
    for mb in split(batch, 3):
        (loss_of(loss_fn)(model(mb))[0] / 3).backward()
    naive = grads(model)
    assert max((naive[n] - expected[n]).abs().max().item() for n in expected) > 1e-3


def test_frozen_towers_are_encoded_once():
    batch = make_batch(8)
    model, loss_fn = build()
    loss_of(loss_fn)(model(batch))[0].backward()
    expected = grads(model)
    model.zero_grad()
    calls = {"trainable": 0, "frozen": 0}

    def trainable(b):
        calls["trainable"] += 1
        return model.trainable(b)

    def frozen(b):
        calls["frozen"] += 1
        with torch.no_grad():
            return model.frozen(b)

    cached_accumulation_step(trainable, split(batch, 4), loss_of(loss_fn), frozen_encode_fn=frozen)
    assert calls == {"trainable": 8, "frozen": 4}
    assert_grads_close(grads(model), expected)


def test_dropout_randomness_is_replayed():
    """With dropout the gradient must equal the one of encoding the micro-batches with autograd
    in the same RNG sequence: only possible if the second pass replays the first pass's masks."""
    batch = make_batch(8)
    model, loss_fn = build(dropout=0.5)
    model.train()
    micro = split(batch, 2)

    torch.manual_seed(123)
    feats = [model(mb) for mb in micro]
    joined = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}
    loss_of(loss_fn)(joined)[0].backward()
    expected = grads(model)
    rng_after_one_pass = torch.get_rng_state()

    model.zero_grad()
    torch.manual_seed(123)
    cached_accumulation_step(model, micro, loss_of(loss_fn))
    assert_grads_close(grads(model), expected)
    # the generator ends where one un-replayed pass leaves it
    assert torch.equal(torch.get_rng_state(), rng_after_one_pass)

    # without the replay the masks differ and so does the gradient
    model.zero_grad()
    torch.manual_seed(123)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grad_cache.RngSnapshot, "restore", lambda self: None)
        cached_accumulation_step(model, micro, loss_of(loss_fn))
    assert max((grads(model)[n] - expected[n]).abs().max().item() for n in expected) > 1e-4


def test_no_sync_wraps_all_but_last_micro_batch_and_scale_loss():
    batch = make_batch(8)
    model, loss_fn = build()
    cached_accumulation_step(model, split(batch, 4), loss_of(loss_fn))
    plain = grads(model)
    model.zero_grad()
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(len(entered))
        yield

    cached_accumulation_step(model, split(batch, 4), loss_of(loss_fn), no_sync=no_sync, scale_loss=lambda l: 8.0 * l)
    assert len(entered) == 3
    assert_grads_close(grads(model), {n: 8.0 * g for n, g in plain.items()})


def test_gradients_accumulate_into_existing_grad():
    batch = make_batch(6)
    model, loss_fn = build()
    cached_accumulation_step(model, split(batch, 2), loss_of(loss_fn))
    once = grads(model)
    cached_accumulation_step(model, split(batch, 2), loss_of(loss_fn))
    assert_grads_close(grads(model), {n: 2 * g for n, g in once.items()})


def test_errors_are_clear():
    model, loss_fn = build()
    batch = make_batch(4)
    with pytest.raises(ValueError, match="at least one"):
        cached_accumulation_step(model, [], loss_of(loss_fn))
    with pytest.raises(TypeError, match="dict of feature tensors"):
        cached_accumulation_step(lambda b: [1], split(batch, 2), loss_of(loss_fn))

    calls = {"n": 0}

    def shrinking(b):  # second pass returns fewer rows: not repeatable
        calls["n"] += 1
        out = model(b)
        return out if calls["n"] <= 2 else {k: v[:1] for k, v in out.items()}

    with pytest.raises(RuntimeError, match="not repeatable.*'text'"):
        cached_accumulation_step(shrinking, split(batch, 2), loss_of(loss_fn))

    frozen = Towers().double()
    frozen.requires_grad_(False)
    with pytest.raises(RuntimeError, match="nothing in encode_fn is trainable"):
        cached_accumulation_step(frozen, split(batch, 2), loss_of(loss_fn))
