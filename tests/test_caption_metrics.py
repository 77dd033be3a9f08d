"""caption_metrics against pycocoevalcap called directly; line separators inside captions; the
fallback without Java or with a Java that fails, answers too little or hangs; bad input."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

import clip4vla.evaluation.captioning as captioning
from clip4vla.evaluation.captioning import (
    JAVA_FAILED,
    JavaError,
    caption_metrics,
    java_available,
    java_problem,
    ptb_tokenize,
    whitespace_tokens,
)

REFERENCES = {
    "v1": ["a red circle moves to the left.", "A red ball is moving left", "the red circle slides left"],
    "v2": ["a small blue square goes up", "a blue square moving upwards while a hum drones"],
    "v3": ["a green triangle bounces off the walls", "green triangle moving right, chirps keep rising"],
}
PREDICTIONS = {"v1": "a red circle moves left", "v2": "a blue square goes down", "v3": "a green circle moves right"}

needs_java = pytest.mark.skipif(not java_available(), reason="pycocoevalcap's PTB tokenizer and METEOR need Java")


@needs_java
def test_equal_to_pycocoevalcap_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in PREDICTIONS.items()})
    with contextlib.redirect_stdout(io.StringIO()):
        expected = {
            "BLEU-4": 100 * Bleu(4).compute_score(gts, res)[0][3],
            "METEOR": 100 * Meteor().compute_score(gts, res)[0],
            "ROUGE-L": 100 * Rouge().compute_score(gts, res)[0],
            "CIDEr": 100 * Cider().compute_score(gts, res)[0],
        }
    ours = caption_metrics(PREDICTIONS, REFERENCES)
    assert ours["tokenizer"] == "ptb" and ours["n_videos"] == 3
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    perfect = caption_metrics({k: v[0] for k, v in REFERENCES.items()}, REFERENCES, metrics=("BLEU-4", "CIDEr"))
    assert perfect["BLEU-4"] > ours["BLEU-4"] and perfect["CIDEr"] > ours["CIDEr"]


def test_without_java_whitespace_tokens_and_no_meteor(capsys):
    ours = caption_metrics(PREDICTIONS, REFERENCES, use_java=False)
    assert ours["tokenizer"].startswith("whitespace") and "not comparable" in ours["tokenizer"]
    assert "METEOR" not in ours and {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(ours)
    assert 0 < ours["CIDEr"] and 0 < ours["BLEU-4"] <= 100
    assert capsys.readouterr().out == ""  # pycocoevalcap's prints stay out of our stdout
    assert whitespace_tokens("A red Circle, moving left!") == "a red circle moving left"


def fake_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A ``java`` shell script first on the PATH (the probe's cache is per path: each test gets its own)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    java = folder / "java"
    java.write_text(f"#!/bin/sh\n{body}\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    assert shutil.which("java") == str(java)
    return java


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``, failing the test (instead of hanging it) when it takes longer than ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a Java failure must not hang"
    if "error" in box:
        raise box["error"]
    return box["value"]


@needs_java
def test_line_separators_inside_captions_do_not_shift_the_references():
    # the case: predictions equal to references that hold \r, U+2028, a form feed...
    clean = {f"v{i}": [f"a {c} square moves {d} with a {s} sound", f"the {c} square goes {d}"]
             for i, (c, d, s) in enumerate(zip(["red", "blue", "green", "pink", "grey", "white"],
                                               ["left", "right", "up", "down", "left", "right"],
                                               ["high", "low", "soft", "loud", "sharp", "dull"]))}
    separators = ["\r", "\u2028", "\x0c", "\x85", "\u2029", "\r\n", "\x0b", "\x1c"]
    dirty = {vid: [refs[0].replace(" ", separators[i % len(separators)], 2), refs[1]]
             for i, (vid, refs) in enumerate(clean.items())}
    expected = caption_metrics({k: v[0] for k, v in clean.items()}, clean, metrics=("BLEU-4", "CIDEr"))
    got = caption_metrics({k: v[0] for k, v in dirty.items()}, dirty, metrics=("BLEU-4", "CIDEr"))
    assert got["tokenizer"] == "ptb"
    assert got["CIDEr"] == pytest.approx(expected["CIDEr"], abs=1e-9)
    assert got["BLEU-4"] == pytest.approx(expected["BLEU-4"], abs=1e-9)
    assert ptb_tokenize(["one\rtwo, three", "four\u2028five"]) == ["one two three", "four five"]


def test_a_failing_java_is_found_at_the_probe_and_scored_without(tmp_path, monkeypatch, caplog):
    fake_java(tmp_path, monkeypatch, 'echo "Error: could not create the Java Virtual Machine" >&2; exit 1')
    problem = within(60, java_problem)
    assert "exited with status 1: Error: could not create the Java Virtual Machine" in problem
    assert "Java fails a test tokenisation" in caplog.text
    ours = within(60, lambda: caption_metrics(PREDICTIONS, REFERENCES))
    plain = caption_metrics(PREDICTIONS, REFERENCES, use_java=False)
    assert ours["tokenizer"] == JAVA_FAILED and "not comparable" in ours["tokenizer"] and "METEOR" not in ours
    assert {k: ours[k] for k in ("BLEU-4", "ROUGE-L", "CIDEr")} == {k: plain[k] for k in ("BLEU-4", "ROUGE-L", "CIDEr")}
    # forced Java (no probe): the tokenizer's failure falls back the same way, labelled
    forced = within(60, lambda: caption_metrics(PREDICTIONS, REFERENCES, use_java=True))
    assert forced["tokenizer"] == JAVA_FAILED and "the PTB tokenizer (Java) failed" in caplog.text


def test_a_java_that_answers_fewer_lines_is_not_trusted(tmp_path, monkeypatch):
    fake_java(tmp_path, monkeypatch, 'echo "a probe of java"; exit 0')  # one video's tokens, as in the issue
    with pytest.raises(JavaError, match="returned 1 lines for 2 captions"):
        ptb_tokenize(["first caption", "second caption"])
    assert "returned 1 lines for 2 captions" in within(60, java_problem)
    assert within(60, lambda: caption_metrics(PREDICTIONS, REFERENCES))["tokenizer"] == JAVA_FAILED


def test_a_hanging_java_times_out_and_falls_back(tmp_path, monkeypatch):
    fake_java(tmp_path, monkeypatch, "exec sleep 600")
    monkeypatch.setattr(captioning, "PROBE_TIMEOUT_S", 1.0)
    assert "did not finish within 1 s" in within(30, java_problem)
    assert within(30, lambda: caption_metrics(PREDICTIONS, REFERENCES))["tokenizer"] == JAVA_FAILED


@needs_java
@pytest.mark.parametrize("meteor", ["exit 3", "exec sleep 600"])
def test_a_failing_or_hanging_meteor_is_left_out_without_deadlock(meteor, tmp_path, monkeypatch, caplog):
    # the tokenizer works (real Java), METEOR (java -jar meteor-1.5.jar) dies or hangs
    real = shutil.which("java")
    fake_java(tmp_path, monkeypatch, f'case " $* " in *" -jar "*) {meteor};; esac\nexec "{real}" "$@"')
    monkeypatch.setattr(captioning, "JAVA_TIMEOUT_S", 2.0)
    monkeypatch.setattr(captioning, "JAVA_TIMEOUT_PER_CAPTION_S", 0.0)
    ours = within(90, lambda: caption_metrics(PREDICTIONS, REFERENCES))
    assert ours["tokenizer"] == "ptb" and "METEOR" not in ours and {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(ours)
    assert "METEOR (Java) failed" in caplog.text


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="non-empty list"):
        caption_metrics({"v1": "x"}, {"v1": []}, use_java=False)
    with pytest.raises(ValueError, match="non-empty list"):
        caption_metrics({"v1": "x"}, {"v1": ["  "]}, use_java=False)
    with pytest.raises(ValueError, match="have references but no prediction"):
        caption_metrics({"v1": "x"}, {"v1": ["a"], "v2": ["b"]}, use_java=False)
    with pytest.raises(ValueError, match="no predictions"):
        caption_metrics({}, {}, use_java=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        caption_metrics(PREDICTIONS, REFERENCES, metrics=("SPICE",))
