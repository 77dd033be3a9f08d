"""Tokenizer parity with OpenAI CLIP (golden fixture, exact) and the behaviour around it."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from clip4vla.text import Tokenizer, tokenize
from clip4vla.text import tokenizer as tokenizer_module

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer.json"
GOLDEN = json.loads(FIXTURE.read_text(encoding="utf-8"))
CASES = GOLDEN["cases"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def test_fixture_has_all_cases():
    assert len(CASES) == GOLDEN["meta"]["n_cases"] == 159


@pytest.mark.parametrize("case", CASES, ids=[str(c["id"]) for c in CASES])
def test_golden_case(tok: Tokenizer, case: dict):
    # Exact equality for all three outputs (GOLDEN-README: tokenizer tolerance is exact).
    ids = tok.encode(case["text"])
    assert ids == case["encode"]
    assert len(ids) == case["n_tokens"]
    row = tokenize(case["text"], context_length=77, truncate=True, tokenizer=tok)
    assert row.shape == (1, 77)
    assert row[0].tolist() == case["tokenize_row"]
    assert tok.decode(ids) == case["decode"]


def test_golden_batch_matches_rows(tok: Tokenizer):
    texts = [c["text"] for c in CASES]
    rows = tokenize(texts, truncate=True, tokenizer=tok)
    assert rows.dtype == torch.long
    assert rows.shape == (len(CASES), 77)
    assert torch.equal(rows, torch.tensor([c["tokenize_row"] for c in CASES], dtype=torch.long))


def test_special_ids_and_vocab(tok: Tokenizer):
    meta = GOLDEN["meta"]
    assert tok.sot_id == meta["sot_token"] == 49406
    assert tok.eot_id == meta["eot_token"] == 49407
    assert tok.vocab_size == meta["vocab_size"] == 49408
    # Every id decodes (no hole in the vocabulary).
    assert tok.decode([tok.sot_id, tok.eot_id]) == "<|startoftext|><|endoftext|>"
    assert len(tok.decode(range(tok.vocab_size))) > 0


def test_default_module_tokenizer_is_shared():
    # tokenize() without an explicit tokenizer uses the lazily built process-wide one.
    a = tokenize("a photo of a cat")
    assert a[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer_module.default_tokenizer() is tokenizer_module.default_tokenizer()


def test_overlong_raises_with_text_and_count(tok: Tokenizer):
    long_text = "a " * 80  # 80 BPE tokens + SOT + EOT = 82
    with pytest.raises(ValueError) as err:
        tokenize(long_text, tokenizer=tok)
    msg = str(err.value)
    assert "82 tokens" in msg
    assert "context_length=77" in msg
    assert "'a a a" in msg and "..." in msg  # abbreviated text, not the whole string
    assert len(msg) < 300


def test_exact_fit_does_not_raise(tok: Tokenizer):
    fits = " ".join(["a"] * 75)  # 75 + 2 == 77
    row = tokenize(fits, tokenizer=tok)[0]
    assert row[0] == tok.sot_id and row[-1] == tok.eot_id and (row[1:-1] == 320).all()


def test_truncate_sets_last_id_to_eot(tok: Tokenizer):
    text = " ".join(str(i % 10) for i in range(100))  # 100 single-digit tokens
    ids = tok.encode(text)
    row = tokenize(text, context_length=16, truncate=True, tokenizer=tok)[0]
    assert row.tolist() == [tok.sot_id, *ids[:14], tok.eot_id]
    # Without truncate the same text is rejected.
    with pytest.raises(ValueError, match="102 tokens"):
        tokenize(text, context_length=16, tokenizer=tok)


def test_batch_shapes_padding_and_context_length(tok: Tokenizer):
    out = tokenize(["a dog", "", "hello world ."], context_length=32, tokenizer=tok)
    assert out.shape == (3, 32) and out.dtype == torch.long
    # Empty text is just SOT EOT then padding.
    assert out[1, :2].tolist() == [tok.sot_id, tok.eot_id] and (out[1, 2:] == 0).all()
    # The EOT position is the argmax of each row (what the text tower pools at).
    eot_pos = out.argmax(-1)
    assert (out[torch.arange(3), eot_pos] == tok.eot_id).all()
    assert eot_pos.tolist() == [3, 1, 4]
    assert tokenize([], tokenizer=tok).shape == (0, 77)


def test_bad_arguments(tok: Tokenizer):
    with pytest.raises(TypeError):
        tokenize(["ok", 3], tokenizer=tok)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context_length"):
        tokenize("x", context_length=1, tokenizer=tok)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([49408])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])


def test_decode_keeps_what_it_is_given(tok: Tokenizer):
    row = tokenize("a cat", tokenizer=tok)[0]
    # Padding id 0 is the token "!": decode does not silently drop it; callers cut at EOT.
    assert tok.decode(row[:5]) == "<|startoftext|>a cat <|endoftext|>!"
    assert tok.decode(torch.tensor([320, 2368])) == "a cat "
    # Sub-word (non word-final) tokens get no space; bytes of a split character are rejoined.
    ids = tok.encode("supercalifragilisticexpialidocious")
    assert len(ids) > 1 and tok.decode(ids) == "supercalifragilisticexpialidocious "
    rune = tok.encode("ᚠᛇᚻ")  # rare script: one token per utf-8 byte or so
    assert len(rune) > 3 and tok.decode(rune) == "ᚠᛇᚻ "
    # A partial utf-8 sequence is replaced with U+FFFD, not dropped and not raised.
    assert tok.decode(rune[:1]) == "\ufffd"


def test_roundtrip_plain_ascii(tok: Tokenizer):
    text = "a man is slicing tomatoes in a kitchen"
    assert tok.decode(tok.encode(text)) == text + " "


def test_bpe_cache_hits(tok: Tokenizer):
    tok.encode("zebra crossing zebra")
    info = tok._bpe.cache_info()
    tok.encode("zebra crossing zebra")
    assert tok._bpe.cache_info().hits >= info.hits + 3


def test_pickles_for_dataloader_workers(tok: Tokenizer):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert clone._bpe.cache_parameters()["maxsize"] == tok._bpe.cache_parameters()["maxsize"]


def test_explicit_merges_path(tmp_path: Path):
    src = Path(tokenizer_module.__file__).with_name(tokenizer_module.MERGES_FILE)
    dst = tmp_path / "merges.txt.gz"
    shutil.copy(src, dst)
    assert Tokenizer(dst).encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    with pytest.raises(FileNotFoundError, match="merges"):
        Tokenizer(tmp_path / "missing.txt.gz")
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\ni n\n")
    with pytest.raises(ValueError, match="merge lines"):
        Tokenizer(short)
