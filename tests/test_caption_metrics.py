"""caption_metrics against pycocoevalcap called directly; the no-Java fallback; bad input."""

from __future__ import annotations

import contextlib
import io

import pytest

from clip4vla.evaluation.captioning import caption_metrics, java_available, whitespace_tokens

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


def test_a_java_failure_falls_back_instead_of_losing_the_evaluation(monkeypatch, caplog):
    import clip4vla.evaluation.captioning as captioning

    def broken(*args, **kwargs):
        raise BrokenPipeError("java died")

    monkeypatch.setattr(captioning, "_ptb", broken)
    ours = caption_metrics(PREDICTIONS, REFERENCES, use_java=True)
    assert ours["tokenizer"].startswith("whitespace") and "PTB tokenizer (Java) failed" in caplog.text


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
