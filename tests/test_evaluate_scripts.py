"""The scripts that score a trained model: flags checked by the config's rules, outputs checked
writable before any work, a broken Java that neither hangs nor loses the captions, one final JSON
schema per task, described flags; and the caption task's training cache held once per clip."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from clip4vla.config import CaptionConfig, load_config
from clip4vla.data.dataset import TriModalDataset
from conftest import PRETRAIN_CLIPS

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("evaluate_caption.py", "evaluate_retrieval.py", "sweep_audio_type.py", "pair_missing_audio.py")


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_status(name: str, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        script(name).main(argv)
    return stop.value.code


def data_args(root: Path) -> list[str]:
    return ["--set", f"data.synthetic.root={root}", "--set", f"data.synthetic.clips={PRETRAIN_CLIPS}"]


@pytest.fixture(scope="module")
def micro_caption_export(tmp_path_factory) -> Path:
    """A micro model file with an untrained caption generator (decoding and scoring need no training)."""
    from clip4vla.models.captioner import CaptionGenerator
    from clip4vla.models.checkpoints import export_model
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.models.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.micro())
    model.attach_head("caption", CaptionGenerator.from_clip(model.clip, 32, layers=1))
    path = tmp_path_factory.mktemp("caption_export") / "model"
    return export_model(model, path, Preprocessing(max_frames=2, max_segments=2), task="caption")


# ------------------------------------------------------------------ flags (issue 23: 8, 17)
@pytest.mark.parametrize("flag, value, message", [
    ("--beam", "0", "argument --beam: caption.beam=0: must lie in [1, 64]"),
    ("--beam", "100000", "argument --beam: caption.beam=100000: must lie in [1, 64]"),
    ("--length-penalty", "nan", "argument --length-penalty: caption.length_penalty=nan: must be a finite number"),
    ("--length-penalty", "-1", "argument --length-penalty: caption.length_penalty=-1.0: must be >= 0"),
])
def test_caption_flags_follow_the_config_rules(flag, value, message, tmp_path, capsys):
    assert exit_status("evaluate_caption.py", ["--model", str(tmp_path / "none.pt"), flag, value]) == 2
    assert message in capsys.readouterr().err  # argument error: before the model is even read


@pytest.mark.parametrize("name", ["evaluate_caption.py", "evaluate_retrieval.py", "sweep_audio_type.py",
                                  "pair_missing_audio.py"])
def test_batch_size_must_be_positive(name, tmp_path, capsys):
    for value in ("0", "-1"):
        assert exit_status(name, ["--model", str(tmp_path / "none.pt"), "--batch-size", value]) == 2
        assert f"argument --batch-size: expected a whole number >= 1, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["evaluate_caption.py", "evaluate_retrieval.py"])
def test_device_is_checked_against_the_machine(name, tmp_path, capsys):
    assert exit_status(name, ["--model", str(tmp_path / "none.pt"), "--device", "gpu0"]) == 2
    assert "argument --device: expected auto, cpu, cuda or cuda:N, got 'gpu0'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert exit_status(name, ["--model", str(tmp_path / "none.pt"), "--device", "cuda"]) == 2
        assert "torch sees no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_is_described_with_its_default(name):
    parser = script(name).build_parser()
    for action in parser._actions:
        assert action.help, f"{name}: {action.option_strings} has no help"
        assert "  " not in action.help, f"{name}: {action.option_strings}: a run of spaces in {action.help!r}"
    text = parser.format_help()
    assert "(default: 16)" in text or "(default: 32)" in text
    for line in (parser.description or "").splitlines():  # a lost line continuation leaves a gap mid-line
        assert not re.search(r"\S {8,}--", line), f"{name}: {line!r}"


# ------------------------------------------------------------------ outputs (issue 23: 13)
@pytest.mark.parametrize("name, flag, extra", [
    ("evaluate_caption.py", "--out", []),
    ("evaluate_retrieval.py", "--out", ["--fusion", "g2g"]),
    ("sweep_audio_type.py", "--plot", []),
    ("pair_missing_audio.py", "--out", []),
])
def test_an_unwritable_output_is_refused_before_any_work(name, flag, extra, micro_caption_export, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = tmp_path / "never-generated"  # any data work would create it
    for target, reason in ((blocker / "out.json", f"{blocker} is a file, not a folder"),
                           (tmp_path, "is a folder: give a file name")):
        status = exit_status(name, ["--model", str(micro_caption_export), flag, str(target), *extra,
                                    *data_args(root)])
        err = capsys.readouterr().err
        assert status == 2 and f"error: {flag} {target}" in err and reason in err, err
        assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# ------------------------------------------------------------------ Java (issue 23: 2)
def test_a_broken_java_neither_hangs_nor_loses_the_captions(micro_caption_export, synthetic_root, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "java").write_text("#!/bin/sh\necho 'broken java' >&2\nexit 1\n")
    (fake / "java").chmod(0o755)
    out = tmp_path / "eval" / "captions.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{fake}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_caption.py"), "--model",
                             str(micro_caption_export), "--beam", "1", "--out", str(out), *data_args(synthetic_root)],
                            capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Java fails a test tokenisation" in result.stderr and "broken java" in result.stderr
    assert "whitespace (Java failed: METEOR left out; not comparable" in result.stdout  # the table says so
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    written = json.loads(out.read_text())
    assert summary["tokenizer"] == written["metrics"]["tokenizer"] and "METEOR" not in summary
    assert written["predictions"] and set(written["predictions"]) == set(written["references"])


def test_captions_are_written_before_scoring(tmp_path, monkeypatch):
    import clip4vla.evaluation.caption_inference as caption

    def broken(*args, **kwargs):
        raise RuntimeError("scorer crashed")

    monkeypatch.setattr(caption, "caption_metrics", broken)
    path = tmp_path / "captions_test.json"
    with pytest.raises(RuntimeError, match="scorer crashed"):
        caption.score_captions("test", 5, "av", {"v1": "a red circle"}, {"v1": ["a red circle moves"]}, 0, [], path)
    assert json.loads(path.read_text())["predictions"] == {"v1": "a red circle"}


# ------------------------------------------------------------------ one JSON per task (issue 24: 7)
def test_evaluate_retrieval_prints_the_fine_tune_schema(micro_export, synthetic_root, tmp_path, capsys):
    from clip4vla.evaluation.fusion_retrieval import retrieval_summary
    from clip4vla.train.retrieval import RetrievalTask

    out = tmp_path / "retrieval.json"
    assert script("evaluate_retrieval.py").main(["--model", str(micro_export), "--fusion", "g2g", "--out", str(out),
                                                 *data_args(synthetic_root)]) == 0
    captured = capsys.readouterr()
    assert f"metrics written to {out}" in captured.err  # what it writes, said (issue 29: 17)
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert list(printed) == ["split", "fusion", "v", "a", "av", "n_unreadable", "n_silent", "skipped"]
    written = json.loads(out.read_text())
    assert printed == retrieval_summary(written) and printed["skipped"] == 0
    assert RetrievalTask.summary(object.__new__(RetrievalTask), written) == printed  # what the fine-tune prints


def test_evaluate_caption_flags_reach_the_decoder_and_it_prints_the_fine_tune_schema(
        micro_caption_export, synthetic_root, tmp_path, capsys):
    from clip4vla.evaluation.caption_inference import caption_summary
    from clip4vla.train.caption import CaptionTask

    out = tmp_path / "captions.json"
    assert script("evaluate_caption.py").main([
        "--model", str(micro_caption_export), "--beam", "2", "--length-penalty", "0.5", "--modality", "v",
        "--out", str(out), *data_args(synthetic_root)]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    assert f"captions and metrics written to {out}" in captured.err
    written = json.loads(out.read_text())
    assert (written["beam"], written["modality"]) == (2, "v") and "beam 2, V," in stdout
    printed = json.loads(stdout.strip().splitlines()[-1])
    assert {"split", "tokenizer", "n_videos", "BLEU-4", "CIDEr", "baselines", "n_unreadable", "skipped"} <= set(printed)
    assert "another video's reference" in printed["baselines"] and printed["skipped"] == 0
    assert printed == json.loads(json.dumps(caption_summary(written)))
    assert CaptionTask.summary(object.__new__(CaptionTask), written) == caption_summary(written)  # the fine-tune's


def test_each_script_says_what_it_writes_into_the_model_folder(micro_export, synthetic_root, tmp_path, capsys):
    """By default the scoring scripts write beside the model file, into its run folder: the --help
    and the run itself say which file (issue 29: 17)."""
    import shutil

    from script_checks import load_script

    for name, words in (("evaluate_retrieval", "<model dir>/retrieval_<split>.json"),
                        ("evaluate_caption", "<model dir>/captions_<split>.json"),
                        ("sweep_audio_type", "<model dir>/audio_type_sweep.png")):
        text = " ".join(load_script(name).build_parser().format_help().split())
        assert words in text.split("options:")[0], name  # in the description, not only at the flag
    model = tmp_path / "run" / "model"
    model.parent.mkdir()
    shutil.copytree(micro_export, model)
    assert script("sweep_audio_type.py").main(["--model", str(model), "--steps", "2", *data_args(synthetic_root)]) == 0
    assert f"plot written to {model.parent / 'audio_type_sweep.png'}" in capsys.readouterr().err
    assert sorted(p.name for p in model.parent.iterdir()) == ["audio_type_sweep.png", "model"]


# ------------------------------------------------------------------ caption fine-tune memory (issue 24: 3)
def test_caption_training_cache_holds_each_clip_once(synthetic_root):
    from clip4vla.train.caption import CaptionTask
    from clip4vla.train.distributed import DistInfo

    config = load_config(CaptionConfig, None, [
        "model.arch=micro", f"data.synthetic.root={synthetic_root}", f"data.synthetic.clips={PRETRAIN_CLIPS}",
        "data.max_frames=2", "audio.max_segments=2", "data.num_workers=0", "data.cache_decoded=true"])
    task = CaptionTask(config, DistInfo(0, 0, 1, torch.device("cpu"), True))
    pairs = task.datasets().train
    clips = {r.video_id for r in pairs.records}
    assert len(pairs) > len(clips)  # unfolded: one row per caption
    pairs.fill_cache(0, progress=False)
    assert len(pairs._cache) == len(clips)  # keyed by media: one entry per clip, whatever its captions
    # decoded row by row without the cache: the same samples
    per_record = TriModalDataset(pairs.records, dataclasses.replace(pairs.options, cache_decoded=False), seed=pairs.seed)
    first = [i for i, r in enumerate(pairs.records) if r.video_id == pairs.records[0].video_id]
    for index in [*first, len(pairs) - 1]:  # the same samples, bit for bit (a clip's pairs, and the last)
        ours, theirs = pairs[index], per_record[index]
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(ours[key], value), (index, key)
            else:
                assert ours[key] == value, (index, key)
