"""Captioning metrics: BLEU-4, METEOR, ROUGE-L and CIDEr (pycocoevalcap), as the paper reports them.

``caption_metrics(predictions, references)`` scores one generated caption per video against all
of the video's reference captions, after the PTB tokenizer pycocoevalcap uses, and returns the
values x100 as the paper's tables print them.

The PTB tokenizer and METEOR are Java programs shipped with pycocoevalcap. We call them ourselves
instead of through pycocoevalcap's wrappers, because those fail silently or forever: its tokenizer
pairs output lines with captions without counting them (a caption holding ``\\r``, a form feed or
U+2028 is split by Java, and every later video is then scored against the previous video's
references), and its METEOR wrapper deadlocks in ``__del__`` when Java fails. Here every caption is
put on one line first (:func:`single_line`), the tokenizer must return exactly one line per caption,
every Java call has a time limit, and Java is probed once per process with a tiny tokenisation
that must round-trip (:func:`java_problem`). Without a working Java the BLEU-4, ROUGE-L and CIDEr
are computed on a plain lower-case whitespace tokenisation, METEOR is left out, and the result
says so in ``"tokenizer"``: those numbers are not comparable to the paper's. The calls and the
arithmetic are pycocoevalcap's (the tests compare with it called directly).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["METRICS", "JavaError", "caption_metrics", "java_available", "java_problem", "ptb_tokenize",
           "single_line", "whitespace_tokens"]

log = logging.getLogger(__name__)

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
PTB = "ptb"
_NOT_COMPARABLE = "METEOR left out; not comparable to the paper's numbers"
WHITESPACE = f"whitespace (no Java: {_NOT_COMPARABLE})"
JAVA_FAILED = f"whitespace (Java failed: {_NOT_COMPARABLE})"
_PUNCTUATION = re.compile(r"[^\w\s']")
# what pycocoevalcap removes from the PTB tokens
_PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                              "-", "--", "...", ";"])
# A JVM starts in about a second; these only bound a Java that hangs (seconds, plus per caption).
PROBE_TIMEOUT_S = 60.0
JAVA_TIMEOUT_S = 300.0
JAVA_TIMEOUT_PER_CAPTION_S = 0.05
_END = "endofcaptions"
_PROBE = (["A probe, of Java's tokenizer.", "Two\u2028lines"], ["a probe of java 's tokenizer", "two lines"])


class JavaError(RuntimeError):
    """The PTB tokenizer or METEOR (Java) failed, timed out or answered something unusable."""


def _jar(package: str, name: str) -> Path:
    import pycocoevalcap

    return Path(pycocoevalcap.__path__[0]) / package / name


def single_line(text: str) -> str:
    """``text`` with every line separator Python knows (``\\n``, ``\\r``, form feed, U+2028, ...: the
    set ``str.splitlines`` splits on) turned into a space. The Java tokenizer reads one caption
    per line; a separator inside a caption would shift every later caption onto another video."""
    return " ".join(text.splitlines())


def whitespace_tokens(text: str) -> str:
    """Lower case, punctuation removed, single spaces: the fallback when Java is missing or broken."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _java_path() -> str | None:
    return shutil.which("java")


def java_available() -> bool:
    """Whether a ``java`` is on the PATH (cheap; :func:`java_problem` checks that it works)."""
    return _java_path() is not None


def _timeout(n_captions: int) -> float:
    return JAVA_TIMEOUT_S + JAVA_TIMEOUT_PER_CAPTION_S * n_captions


def _stderr_tail(data: bytes | str | None) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f": {' | '.join(lines[-3:])[:300]}" if lines else ""


def _kill(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and anything it started (it leads its own process group): a wrapper script's
    child would otherwise keep our pipes open and a read would wait forever."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()


def _start_java(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    try:
        return subprocess.Popen(cmd, start_new_session=True, **kwargs)
    except OSError as err:
        raise JavaError(f"cannot run {cmd[0]}: {err}") from None


def _ptb_lines(java: str, sentences: Sequence[str], timeout: float) -> list[str]:
    """Stanford's PTB tokenizer (lower case, one output line per input line) on ``sentences``."""
    with tempfile.TemporaryDirectory(prefix="clip4vla-ptb-") as folder:
        source = Path(folder) / "captions.txt"
        # a last line of our own: it must come back last, as it went in, or the lines are not aligned
        source.write_text("\n".join([*(single_line(s) for s in sentences), _END]), encoding="utf-8")
        jar = _jar("tokenizer", "stanford-corenlp-3.4.1.jar")
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
               "-encoding", "UTF-8", str(source)]
        proc = _start_java(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.communicate()
            raise JavaError(f"the PTB tokenizer ({java}) did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise JavaError(f"the PTB tokenizer ({java}) exited with status {proc.returncode}{_stderr_tail(err)}")
    text = out.decode("utf-8", "replace")
    lines = (text[:-1] if text.endswith("\n") else text).split("\n")
    if len(lines) != len(sentences) + 1 or lines[-1] != _END:
        raise JavaError(f"the PTB tokenizer ({java}) returned {len(lines) - (lines[-1] == _END)} lines for "
                        f"{len(sentences)} captions")
    return lines[:-1]


def _without_punctuation(line: str) -> str:
    return " ".join(w for w in line.rstrip().split(" ") if w not in _PTB_PUNCTUATION)


def ptb_tokenize(sentences: Sequence[str], java: str | None = None, timeout: float | None = None) -> list[str]:
    """pycocoevalcap's tokenisation of each sentence: PTB tokens, lower case, punctuation removed.

    Raises :class:`JavaError` when Java fails, outlives ``timeout`` seconds (default: a limit that
    grows with the number of sentences) or does not return one line per sentence.
    """
    java = java or _java_path()
    if java is None:
        raise JavaError("no java on the PATH")
    if not sentences:
        return []
    lines = _ptb_lines(java, sentences, _timeout(len(sentences)) if timeout is None else timeout)
    return [_without_punctuation(line) for line in lines]


@functools.lru_cache(maxsize=None)
def _probe(java: str) -> str | None:
    try:
        got = ptb_tokenize(_PROBE[0], java, PROBE_TIMEOUT_S)
    except JavaError as err:
        problem = str(err)
    else:
        problem = None if got == _PROBE[1] else f"{java} tokenised {_PROBE[0]!r} as {got!r}, expected {_PROBE[1]!r}"
    if problem is not None:  # said once per process and java
        log.warning("Java fails a test tokenisation (%s): captions are scored on whitespace tokens, without METEOR "
                    "(not comparable to the paper's numbers)", problem)
    return problem


def java_problem() -> str | None:
    """Why Java cannot give the PTB tokens and METEOR, or None when it works.

    Checked once per ``java`` found on the PATH (a short tokenisation that must round-trip), so a
    broken Java shows at start-up, not after hours of decoding.
    """
    java = _java_path()
    if java is None:
        return "no java on the PATH"
    return _probe(java)


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
    """PTB tokens of the references (``gts``) and predictions (``res``) in pycocoevalcap's layout
    (one Java run for both; each dict keeps its input's order, as pycocoevalcap's would)."""
    # an empty prediction would leave an empty line: give it one token that matches nothing
    sentences = [v if v.strip() else "." for v in predictions.values()]
    sentences += [r for refs in references.values() for r in refs]
    tokens = iter(ptb_tokenize(sentences))
    res = {k: [next(tokens)] for k in predictions}
    gts = {k: [next(tokens) for _ in refs] for k, refs in references.items()}
    return gts, res


def _meteor(gts: Mapping[str, list[str]], res: Mapping[str, list[str]], java: str | None = None) -> float:
    """METEOR 1.5 over the jar's ``-stdio`` protocol, as pycocoevalcap's wrapper speaks it, with a time
    limit: a Java that dies or hangs raises :class:`JavaError` instead of blocking forever."""
    java = java or _java_path()
    if java is None:
        raise JavaError("no java on the PATH")
    jar = _jar("meteor", "meteor-1.5.jar")
    timeout = _timeout(sum(len(r) for r in gts.values()))
    with tempfile.TemporaryFile() as errors:
        proc = _start_java([java, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"],
                           cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        watchdog = threading.Timer(timeout, _kill, (proc,))  # unblocks a read that would wait forever
        watchdog.start()

        def ask(line: str, answers: int) -> list[str]:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
            return [proc.stdout.readline().decode().strip() for _ in range(answers)]

        try:
            stats = []
            for vid in gts:
                hypothesis = res[vid][0].replace("|||", "").replace("  ", " ")
                stats += ask(" ||| ".join(("SCORE", " ||| ".join(gts[vid]), hypothesis)), 1)
            # one score per video, then the corpus score
            return float(ask(" ||| ".join(["EVAL", *stats]), len(gts) + 1)[-1])
        except (OSError, ValueError) as err:
            if not watchdog.is_alive():
                raise JavaError(f"METEOR ({java}) did not finish within {timeout:.0f} s") from None
            _kill(proc)
            proc.wait()
            errors.seek(0)
            reason = f"{type(err).__name__}: {err}"
            raise JavaError(f"METEOR ({java}) failed ({reason}){_stderr_tail(errors.read())}") from None
        finally:
            watchdog.cancel()
            _kill(proc)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()


def caption_metrics(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = METRICS,
    use_java: bool | None = None,
) -> dict[str, Any]:
    """``{"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` x100 (those of ``metrics``) and ``"tokenizer"``.

    ``use_java``: None uses Java when :func:`java_problem` finds it working; False forces the
    whitespace fallback. A Java failure (tokenizer or METEOR) is logged and falls back likewise:
    whitespace tokens labelled ``JAVA_FAILED``, or METEOR left out.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
    _check(predictions, references)
    if use_java is None:
        java = java_problem() is None
        tokenizer = JAVA_FAILED if java_available() else WHITESPACE
    else:
        java, tokenizer = use_java, WHITESPACE
    gts = res = None
    if java:
        try:
            gts, res = _ptb(predictions, references)
            tokenizer = PTB
        except JavaError as err:  # a broken JVM must not lose a finished evaluation
            tokenizer = JAVA_FAILED
            log.warning("the PTB tokenizer (Java) failed (%s); scoring whitespace tokens instead", err)
    if gts is None:
        gts = {k: [whitespace_tokens(r) for r in refs] for k, refs in references.items()}
        res = {k: [whitespace_tokens(v) or "."] for k, v in predictions.items()}
    out: dict[str, Any] = {"tokenizer": tokenizer, "n_videos": len(predictions)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its BLEU internals
        if "BLEU-4" in metrics:
            out["BLEU-4"] = 100.0 * Bleu(4).compute_score(gts, res)[0][3]
        if "METEOR" in metrics and tokenizer == PTB:
            try:
                out["METEOR"] = 100.0 * _meteor(gts, res)
            except JavaError as err:
                log.warning("METEOR (Java) failed (%s); it is left out", err)
        if "ROUGE-L" in metrics:
            out["ROUGE-L"] = 100.0 * Rouge().compute_score(gts, res)[0]
        if "CIDEr" in metrics:
            out["CIDEr"] = 100.0 * Cider().compute_score(gts, res)[0]
    return out
