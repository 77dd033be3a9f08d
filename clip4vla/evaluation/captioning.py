"""Captioning metrics: BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap), as the paper reports them.

``caption_metrics(predictions, references)`` scores one generated caption per video against all
of the video's reference captions, after pycocoevalcap's PTB tokenizer, and returns the values
x100 as the paper's tables print them. The PTB tokenizer and METEOR run on Java: without Java
(or when it fails mid-run) the BLEU-4, ROUGE-L and CIDEr are computed on a plain lower-case
whitespace tokenisation instead, and the result says so in ``"tokenizer"`` — those numbers are
not comparable to the paper's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
from typing import Any, Mapping, Sequence

__all__ = ["METRICS", "caption_metrics", "java_available", "whitespace_tokens"]

log = logging.getLogger(__name__)

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
PTB = "ptb"
WHITESPACE = "whitespace (no Java: METEOR left out; not comparable to the paper's numbers)"
_PUNCTUATION = re.compile(r"[^\w\s']")


def java_available() -> bool:
    return shutil.which("java") is not None


def whitespace_tokens(text: str) -> str:
    """Lower case, punctuation removed, single spaces: the fallback when Java is missing."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _check(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    if not predictions:
        raise ValueError("no predictions to score")
    missing = sorted(set(predictions) - set(references))
    if missing:
        raise ValueError(f"{len(missing)} predicted videos have no references, e.g. {missing[:3]}")
    extra = sorted(set(references) - set(predictions))
    if extra:
        raise ValueError(f"{len(extra)} videos have references but no prediction, e.g. {extra[:3]}")
    for vid, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise ValueError(f"video {vid!r}: references must be a non-empty list of non-empty captions, got {refs!r}")
        if not isinstance(predictions[vid], str):
            raise ValueError(f"video {vid!r}: the prediction must be a string, got {type(predictions[vid]).__name__}")


def _ptb(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> tuple[dict, dict]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    # an empty prediction would vanish from PTB's output: give it one token that matches nothing
    res = tokenizer.tokenize({k: [{"caption": v if v.strip() else "."}] for k, v in predictions.items()})
    gts = tokenizer.tokenize({k: [{"caption": r} for r in refs] for k, refs in references.items()})
    return gts, res


def caption_metrics(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = METRICS,
    use_java: bool | None = None,
) -> dict[str, Any]:
    """``{"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` x100 (those of ``metrics``) and ``"tokenizer"``.

    ``use_java``: None decides by whether ``java`` is on the PATH; False forces the whitespace
    fallback. A Java failure (tokenizer or METEOR) is logged and falls back likewise.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
    _check(predictions, references)
    java = java_available() if use_java is None else use_java
    tokenizer = WHITESPACE
    gts = res = None
    if java:
        try:
            gts, res = _ptb(predictions, references)
            tokenizer = PTB
        except Exception as err:  # noqa: BLE001 - a broken JVM must not lose a finished evaluation
            log.warning("the PTB tokenizer (Java) failed (%s: %s); scoring whitespace tokens instead", type(err).__name__, err)
    if gts is None:
        gts = {k: [whitespace_tokens(r) for r in refs] for k, refs in references.items()}
        res = {k: [whitespace_tokens(v) or "."] for k, v in predictions.items()}
    out: dict[str, Any] = {"tokenizer": tokenizer, "n_videos": len(predictions)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its BLEU internals
        if "BLEU-4" in metrics:
            out["BLEU-4"] = 100.0 * Bleu(4).compute_score(gts, res)[0][3]
        if "METEOR" in metrics and tokenizer == PTB:
            try:
                from pycocoevalcap.meteor.meteor import Meteor

                out["METEOR"] = 100.0 * Meteor().compute_score(gts, res)[0]
            except Exception as err:  # noqa: BLE001
                log.warning("METEOR (Java) failed (%s: %s); it is left out", type(err).__name__, err)
        if "ROUGE-L" in metrics:
            out["ROUGE-L"] = 100.0 * Rouge().compute_score(gts, res)[0]
        if "CIDEr" in metrics:
            out["CIDEr"] = 100.0 * Cider().compute_score(gts, res)[0]
    return out
