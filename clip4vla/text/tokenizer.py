"""OpenAI CLIP byte-level BPE tokenizer.

The vocabulary is rebuilt from the shipped merges file exactly as the CLIP text tower expects it:
256 byte symbols, the same 256 symbols with the word-end marker ``</w>``, 48,894 merges, then
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407). Any deviation (another ftfy version, a
different regex, not lower-casing) changes ids and silently degrades a pretrained text tower, so
``tests/test_tokenizer.py`` pins every id against the reference fixture.
"""

from __future__ import annotations

import functools
import gzip
import html
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import ftfy
import regex
import torch

__all__ = ["Tokenizer", "tokenize", "default_tokenizer", "MERGES_FILE"]

MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# The merges file holds many more lines than CLIP uses; the vocabulary is capped at
# 49152 - 256 - 2 merges so that bytes + word-final bytes + merges + 2 specials = 49408.
_N_MERGES = 49152 - 256 - 2
_WORD_END = "</w>"

# Split rule of the reference: the two special tokens (typed in the text they still become
# special ids), ASCII-apostrophe contractions, runs of letters, *single* digits, runs of other
# non-space symbols. IGNORECASE only matters for the contractions/specials; text is lower-cased
# before splitting anyway.
_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def _byte_symbols() -> list[str]:
    """One printable unicode character per byte value 0..255.

    Bytes that are already visible, non-space Latin-1 characters stand for themselves; the rest
    (controls, space, soft hyphen, ...) are shifted to code points 256+ in byte order. This keeps
    every BPE symbol a printable string while staying a bijection with raw bytes.
    """
    visible = set(range(ord("!"), ord("~") + 1))
    visible |= set(range(ord("¡"), ord("¬") + 1))
    visible |= set(range(ord("®"), ord("ÿ") + 1))
    symbols = []
    shift = 0
    for b in range(256):
        if b in visible:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shift))
            shift += 1
    return symbols


def _default_merges_path() -> Path:
    # importlib.resources works for an installed package as well as a source checkout.
    return Path(str(resources.files("clip4vla.text").joinpath(MERGES_FILE)))


def _normalise(text: str) -> str:
    """ftfy repair, HTML unescape twice, whitespace collapse, lower-case (reference order)."""
    text = ftfy.fix_text(text)
    # Twice on purpose: captions scraped from HTML are often double-escaped ("&amp;amp;").
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE tokenizer reproducing OpenAI CLIP's ``SimpleTokenizer`` ids.

    Args:
        merges_path: gzip merges file; defaults to the copy shipped inside ``clip4vla.text``.
        cache_size: number of distinct words whose BPE result is memoised. Captions repeat
            words heavily, so the cache turns the quadratic merge loop into a dict lookup.
    """

    def __init__(self, merges_path: str | Path | None = None, cache_size: int = 1 << 16) -> None:
        path = Path(merges_path) if merges_path is not None else _default_merges_path()
        if not path.is_file():
            raise FileNotFoundError(f"BPE merges file not found: {path}")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        # Line 0 is a version header; the next _N_MERGES lines are the merges used.
        merge_lines = lines[1 : 1 + _N_MERGES]
        if len(merge_lines) != _N_MERGES:
            raise ValueError(f"{path}: expected at least {_N_MERGES} merge lines, found {len(merge_lines)}")
        merges = [tuple(line.split()) for line in merge_lines]

        self._byte_to_symbol = _byte_symbols()
        self._symbol_to_byte = {s: b for b, s in enumerate(self._byte_to_symbol)}

        # Base vocabulary order is not byte order: the self-representing (visible) bytes come
        # first, then the shifted ones; sorting by code point gives exactly that order.
        base = sorted(self._byte_to_symbol)
        vocab = base + [s + _WORD_END for s in base]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self._encoder = {tok: i for i, tok in enumerate(vocab)}
        # Raw bytes per id; "</w>" is kept as literal bytes and turned into a space after the
        # utf-8 decode, which is how the reference places spaces between words.
        self._id_bytes = [bytes(self._symbol_to_byte[c] for c in tok) for tok in vocab[:-2]]
        self._id_bytes += [SOT_TOKEN.encode("ascii"), EOT_TOKEN.encode("ascii")]
        self._merge_rank = {m: r for r, m in enumerate(merges)}
        self._special = {SOT_TOKEN: self._encoder[SOT_TOKEN], EOT_TOKEN: self._encoder[EOT_TOKEN]}
        self._bpe = functools.lru_cache(maxsize=cache_size)(self._bpe_uncached)

    # Datasets holding a tokenizer are pickled into DataLoader workers (spawn start method);
    # the lru_cache wrapper is not picklable, so it is rebuilt empty on the other side.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache_size"] = self._bpe.cache_parameters()["maxsize"]
        del state["_bpe"]
        return state

    def __setstate__(self, state: dict) -> None:
        cache_size = state.pop("_cache_size")
        self.__dict__.update(state)
        self._bpe = functools.lru_cache(maxsize=cache_size)(self._bpe_uncached)

    # -- properties -------------------------------------------------------------------------
    @property
    def sot_id(self) -> int:
        return self._special[SOT_TOKEN]

    @property
    def eot_id(self) -> int:
        return self._special[EOT_TOKEN]

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    # -- BPE ----------------------------------------------------------------------------------
    def _bpe_uncached(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token (already mapped to byte symbols).

        Greedy: repeatedly merge the adjacent pair with the lowest merge rank, every
        non-overlapping occurrence left to right, until no known pair is left.
        """
        parts = list(word[:-1]) + [word[-1] + _WORD_END]
        ranks = self._merge_rank
        while len(parts) > 1:
            best = None
            best_rank = None
            for pair in zip(parts, parts[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            first, second = best
            merged = first + second
            out: list[str] = []
            i = 0
            n = len(parts)
            while i < n:
                if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        return tuple(self._encoder[p] for p in parts)

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT (those are added by :func:`tokenize`)."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects str, got {type(text).__name__}")
        ids: list[int] = []
        sym = self._byte_to_symbol
        for piece in _SPLIT.findall(_normalise(text)):
            special = self._special.get(piece)
            if special is not None:
                ids.append(special)
                continue
            ids.extend(self._bpe("".join(sym[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of ``ids``; word-final tokens end with a space, special tokens are kept verbatim.

        Padding (id 0 is the token ``!``) is *not* stripped: cut rows at EOT before decoding.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        ids = [int(i) for i in ids]
        table = self._id_bytes
        bad = [i for i in ids if not 0 <= i < len(table)]
        if bad:
            raise ValueError(f"token ids out of range [0, {len(table)}): {bad[:10]}")
        raw = b"".join(table[i] for i in ids)
        return raw.decode("utf-8", errors="replace").replace(_WORD_END, " ")


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """Process-wide tokenizer built lazily (loading the merges takes a fraction of a second)."""
    return Tokenizer()


def _abbreviate(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def tokenize(
    texts: str | Sequence[str],
    context_length: int = 77,
    truncate: bool = False,
    tokenizer: Tokenizer | None = None,
) -> torch.Tensor:
    """``[SOT] + bpe + [EOT]`` rows right-padded with 0, as a LongTensor ``[N, context_length]``.

    Overlong text raises ``ValueError`` unless ``truncate=True``; then the row is cut to
    ``context_length`` and its last id forced to EOT so the text tower still pools at an EOT.
    """
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError("tokenize expects a str or a sequence of str")
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
    tok = tokenizer if tokenizer is not None else default_tokenizer()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tok.sot_id, *tok.encode(text), tok.eot_id]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {_abbreviate(text)} has {len(ids)} tokens (with SOT/EOT), more than "
                    f"context_length={context_length}; pass truncate=True to cut it"
                )
            ids = ids[:context_length]
            ids[-1] = tok.eot_id
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
