"""Every YAML in configs/ runs end to end through its own script, on format-twin data.

The real-corpus configs are run as a user would run them, with only what a user changes on their
machine overridden: the data paths (pointed at the synthetic clips laid out in that corpus's real
format, ``clip4vla.data.synthetic_formats``), the model file (a micro OpenAI-format CLIP written
here), and the sizes (batch, steps, workers) that make a CPU test take seconds. A config that
cannot finish — a missing split, a key its script does not know, a reader argument that does not
fit — fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip4vla.config import CaptionConfig, PretrainConfig, ProbeConfig, RetrievalConfig, load_config
from clip4vla.data.synthetic_formats import write_corpus_format
from clip4vla.models.clip import CLIPConfig
from script_checks import paper_corpora_settings

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

# config file -> (its script, the test that runs it end to end)
CONFIG_RUNS = {
    "pretrain_synthetic.yaml": ("pretrain.py", "test_pretrain.py::test_pretrain_script_writes_outputs_and_prints_json_last"),
    "pretrain_howto_audioset.yaml": ("pretrain.py", "test_configs_run.py::test_paper_pretraining_config_runs_on_two_ranks_and_resumes"),
    "pretrain_howto_audioset_shards.yaml": ("pretrain.py", "test_configs_run.py::test_paper_pretraining_config_on_shards"),
    "pretrain_laion_b16.yaml": ("pretrain.py", "test_backbones.py::test_laion_b16_config_runs_on_the_format_twins"),
    "finetune_synthetic.yaml": ("finetune_retrieval.py", "test_configs_run.py::test_synthetic_retrieval_config_then_evaluation"),
    "finetune_msrvtt.yaml": ("finetune_retrieval.py", "test_configs_run.py::test_msrvtt_retrieval_config_with_paired_audio"),
    "finetune_vatex.yaml": ("finetune_retrieval.py", "test_configs_run.py::test_vatex_and_audiocaps_retrieval_configs"),
    "finetune_audiocaps.yaml": ("finetune_retrieval.py", "test_configs_run.py::test_vatex_and_audiocaps_retrieval_configs"),
    "caption_synthetic.yaml": ("finetune_caption.py", "test_configs_run.py::test_synthetic_caption_config_then_evaluation"),
    "caption_msrvtt.yaml": ("finetune_caption.py", "test_configs_run.py::test_msrvtt_and_vatex_caption_configs"),
    "caption_vatex.yaml": ("finetune_caption.py", "test_configs_run.py::test_msrvtt_and_vatex_caption_configs"),
    "probe_synthetic.yaml": ("linear_probe.py", "test_configs_run.py::test_probe_configs_on_esc50_and_ucf101_twins"),
    "probe_esc50.yaml": ("linear_probe.py", "test_configs_run.py::test_probe_configs_on_esc50_and_ucf101_twins"),
    "probe_ucf101.yaml": ("linear_probe.py", "test_configs_run.py::test_probe_configs_on_esc50_and_ucf101_twins"),
    "pretrain_manifest.yaml": ("pretrain.py", "test_configs_run.py::test_manifest_configs_then_evaluation"),
    "finetune_manifest.yaml": ("finetune_retrieval.py", "test_configs_run.py::test_manifest_configs_then_evaluation"),
    "finetune_caption_manifest.yaml": ("finetune_caption.py", "test_configs_run.py::test_manifest_configs_then_evaluation"),
}
CONFIG_CLASSES = {"pretrain.py": PretrainConfig, "finetune_retrieval.py": RetrievalConfig,
                  "finetune_caption.py": CaptionConfig, "linear_probe.py": ProbeConfig}


def test_every_config_has_an_end_to_end_run():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(CONFIG_RUNS)
    for name, (script, test) in CONFIG_RUNS.items():
        assert (REPO / "scripts" / script).is_file()
        module, function = test.split("::")
        assert f"def {function}(" in (REPO / "tests" / module).read_text(), test
        load_config(CONFIG_CLASSES[script], CONFIGS / name)  # parses with its script's schema


@pytest.fixture(scope="session")
def twins(synthetic_root, tmp_path_factory) -> Path:
    """The 24 synthetic clips in every corpus format the configs use (raw and prepared media)."""
    out = tmp_path_factory.mktemp("twins")
    for fmt in ("howto100m", "audioset", "msrvtt", "vatex", "audiocaps"):
        write_corpus_format(synthetic_root, fmt, out / fmt, prepared=True)
    for fmt in ("esc50", "ucf101"):  # the probes read raw media
        write_corpus_format(synthetic_root, fmt, out / fmt)
    return out


def run(script: str, args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run([*prefix, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                            env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def sets(overrides: dict[str, object]) -> list[str]:
    return [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]


def test_paper_pretraining_config_runs_on_two_ranks_and_resumes(twins, micro_openai_clip, tmp_path):
    out = tmp_path / "paper"
    spans = tmp_path / "spans"  # the compact span index, as the config expects
    run("prepare_data.py", ["--howto100m-index", str(twins / "howto100m" / "caption.json"), "--out", str(spans),
                            "--no-progress"])
    overrides = sets({
        "model.init_from": micro_openai_clip,
        "model.activation": "quick_gelu",  # a plain state dict does not record it
        "model.arch": "null",  # the file's (micro), not ViT-B/32
        **paper_corpora_settings(twins, spans),
        "data.num_workers": 0,
        "data.max_frames": 2,
        "audio.max_segments": 2,
        "train.batch_size": 4,  # 2 per rank, x2 accumulation: frozen towers + feature cache
        "train.accum_steps": 2,
        "train.max_steps": 4,
        "train.eval_every_steps": 2,
        "train.log_every": 1,
        "train.checkpoint_every_steps": 1,
        "train.keep_last": 10,
        "train.precision": "fp32",  # bf16 is emulated (~100x slower) on CPUs without bf16 instructions
        "train.device": "cpu",
        "train.output_dir": out,
    })
    first = run("pretrain.py", ["--config", str(CONFIGS / "pretrain_howto_audioset.yaml"), *overrides], nproc=2)
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["split"] == "test" and {"t2a", "v2a", "t2v", "chance"} <= set(summary)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val/t2a/R1" in r] == [2, 4]  # validation cadence of its own
    final = torch.load(out / "checkpoints" / "ckpt_000004.pt", weights_only=True)["model"]

    # resume from step 2 (as after a crash): the same weights at step 4
    for step in (3, 4):
        (out / "checkpoints" / f"ckpt_{step:06d}.pt").unlink()
    resumed = run("pretrain.py", ["--config", str(CONFIGS / "pretrain_howto_audioset.yaml"), *overrides, "--resume"],
                  nproc=2)
    assert "resumed from" in resumed.stderr and "ckpt_000002.pt" in resumed.stderr
    again = torch.load(out / "checkpoints" / "ckpt_000004.pt", weights_only=True)["model"]
    for key in final:
        assert torch.equal(final[key], again[key]), key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]

    from clip4vla import load_model

    model = load_model(out / "model")
    assert model.clip.config == CLIPConfig.micro() and model.preprocessing.max_frames == 2


def test_paper_pretraining_config_on_shards(twins, micro_openai_clip, tmp_path):
    data = {}
    for corpus in ("howto100m", "audioset", "msrvtt"):  # each corpus's videos written once as shards
        run("prepare_data.py", ["--videos", str(twins / corpus / "videos"), "--out", str(tmp_path / corpus),
                                "--shards", "--shard-mb", "0.5", "--no-progress"])
        data[f"data.{corpus}.shards_dir"] = tmp_path / corpus
    run("prepare_data.py", ["--howto100m-index", str(twins / "howto100m" / "caption.json"), "--out",
                            str(tmp_path / "spans"), "--no-progress"])
    summary = last_json(run("pretrain.py", ["--config", str(CONFIGS / "pretrain_howto_audioset_shards.yaml"), *sets({
        **data,
        "model.init_from": micro_openai_clip, "model.arch": "null", "model.activation": "quick_gelu",
        "data.howto100m.caption_path": tmp_path / "spans",
        "data.audioset.segments_csv": twins / "audioset" / "unbalanced_train_segments.csv",
        "data.audioset.ontology_json": twins / "audioset" / "ontology.json",
        "data.msrvtt.annotation_dir": twins / "msrvtt",
        "data.num_workers": 2, "data.max_frames": 2, "audio.max_segments": 2,
        "train.batch_size": 4, "train.accum_steps": 2, "train.max_steps": 2, "train.eval_every_steps": 2,
        "train.log_every": 1, "train.precision": "fp32", "train.device": "cpu", "train.output_dir": tmp_path / "run",
    })]))
    assert summary["split"] == "test" and {"t2a", "v2a", "t2v"} <= set(summary)
    assert summary.get("skipped", 0) == 0  # every sample came from the shards
    assert len(list((tmp_path / "howto100m").glob("shard-*.tar"))) >= 2


# a few-step fine-tuning of the micro model: what a user changes on their machine, and sizes
FINETUNE_SIZES = {
    "model.arch": "null", "data.num_workers": 0, "data.max_frames": 2, "audio.max_segments": 2,
    "train.batch_size": 4, "train.max_steps": 2, "train.eval_every_steps": 2, "train.log_every": 1,
    "train.precision": "fp32", "train.device": "cpu", "retrieval.fusion_layers": 1,
}


def last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_synthetic_retrieval_config_then_evaluation(synthetic_root, micro_export, tmp_path):
    out = tmp_path / "ft"
    args = sets({**FINETUNE_SIZES, "model.init_from": micro_export, "data.synthetic.root": synthetic_root,
                 "data.synthetic.clips": 24, "train.output_dir": out})
    summary = last_json(run("finetune_retrieval.py", args))  # the default config: finetune_synthetic.yaml
    assert summary["split"] == "test" and set(summary) >= {"v", "a", "av"}
    assert {"R1", "R5", "R10", "MedR", "MeanR"} <= set(summary["av"]["t2v"]) and summary["av"]["n_texts"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/t2v/R1" in r] == [2]
    # the exported model carries its fusion head; the evaluation script scores it from the file
    evaluated = run("evaluate_retrieval.py", ["--model", str(out / "model"), *sets({
        "data.synthetic.root": synthetic_root, "data.synthetic.clips": 24})])
    assert last_json(evaluated)["av"] == summary["av"]  # same inputs, same numbers
    assert "text<->video retrieval on the test split (G2G" in evaluated.stdout
    assert (out / "retrieval_test.json").is_file()
    # L2L through the same script
    l2l = last_json(run("finetune_retrieval.py", args[:] + sets({"retrieval.fusion": "l2l",
                                                                  "train.output_dir": tmp_path / "l2l"})))
    assert l2l["fusion"] == "l2l" and l2l["av"]["n_texts"] == summary["av"]["n_texts"]
    # a pre-trained model has no fusion head: a clear error, or zero-shot global features when asked
    data = sets({"data.synthetic.root": synthetic_root, "data.synthetic.clips": 24})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    refused = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_retrieval.py"), "--model",
                              str(micro_export), "--out", str(tmp_path / "never.json"), *data],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "has no fusion head" in refused.stderr and "--fusion g2g" in refused.stderr
    assert not (tmp_path / "never.json").exists()
    zero_shot = last_json(run("evaluate_retrieval.py", ["--model", str(micro_export), "--fusion", "g2g", "--out",
                                                        str(tmp_path / "zs.json"), *data]))
    assert zero_shot["fusion"] == "g2g" and zero_shot["av"]["n_videos"] == summary["av"]["n_videos"]
    # Fig. 4: the [VB] -> [NB] sweep, a table, a plot and the rows as JSON
    swept = last_json(run("sweep_audio_type.py", ["--model", str(micro_export), "--steps", "3", "--plot",
                                                  str(tmp_path / "sweep.png"), *data]))
    assert [row["w"] for row in swept["sweep"]] == [0.0, 0.5, 1.0]
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_msrvtt_retrieval_config_with_paired_audio(twins, micro_export, tmp_path):
    pairs = tmp_path / "pairs.json"
    data = {"data.msrvtt.annotation_dir": twins / "msrvtt", "data.msrvtt.video_dir": twins / "msrvtt" / "videos"}
    paired = run("pair_missing_audio.py", ["--model", str(micro_export), "--config", str(CONFIGS / "finetune_msrvtt.yaml"),
                                           "--out", str(pairs), *sets(data)])
    assert "clips have no audio" in paired.stdout
    pairing = json.loads(pairs.read_text())["pairs"]
    assert pairing and all(p["donor"] for p in pairing.values())
    out = tmp_path / "ft"
    summary = last_json(run("finetune_retrieval.py", ["--config", str(CONFIGS / "finetune_msrvtt.yaml"), *sets({
        **FINETUNE_SIZES, **data, "model.init_from": micro_export, "data.audio_pairs": pairs, "train.output_dir": out})]))
    assert summary["fusion"] == "g2l" and summary["n_silent"] == 0  # the silent test clips got a donor's audio
    assert json.loads((out / "model" / "config.json").read_text())["preprocessing"]["audio_type"] == 0.5


def test_vatex_and_audiocaps_retrieval_configs(twins, micro_export, tmp_path):
    for name, data in (
        ("finetune_vatex.yaml", {"data.vatex.annotation_dir": twins / "vatex", "data.vatex.video_dir": twins / "vatex" / "videos"}),
        ("finetune_audiocaps.yaml", {"data.audiocaps.annotation_dir": twins / "audiocaps",
                                     "data.audiocaps.video_dir": twins / "audiocaps" / "videos"}),
    ):
        summary = last_json(run("finetune_retrieval.py", ["--config", str(CONFIGS / name), *sets({
            **FINETUNE_SIZES, **data, "model.init_from": micro_export, "train.output_dir": tmp_path / name})]))
        assert summary["split"] == "test", name
        expected = {"a", "av"} if "audiocaps" in name else {"v", "a", "av"}
        assert expected <= set(summary), name
        if "vatex" in name:  # 10 captions per clip: every one is a query
            assert summary["v"]["n_texts"] == 10 * summary["v"]["n_videos"]


CAPTION_SIZES = {
    "model.arch": "null", "data.num_workers": 0, "data.max_frames": 2, "audio.max_segments": 2,
    "train.batch_size": 4, "train.max_steps": 2, "train.eval_every_steps": 2, "train.log_every": 1,
    "train.precision": "fp32", "train.device": "cpu", "caption.fusion_layers": 1, "caption.beam": 2,
}


def test_synthetic_caption_config_then_evaluation(synthetic_root, micro_export, tmp_path):
    out = tmp_path / "cap"
    data = {"data.synthetic.root": synthetic_root, "data.synthetic.clips": 24}
    summary = last_json(run("finetune_caption.py", sets({**CAPTION_SIZES, **data, "model.init_from": micro_export,
                                                         "train.output_dir": out})))  # default: caption_synthetic.yaml
    assert summary["split"] == "test" and {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(summary)
    assert "most frequent training caption" in summary["baselines"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/CIDEr" in r] == [2]
    written = json.loads((out / "captions_test.json").read_text())
    assert set(written["predictions"]) == set(written["references"]) and written["references"]
    evaluated = run("evaluate_caption.py", ["--model", str(out / "model"), "--beam", "2", "--out",
                                            str(tmp_path / "eval.json"), *sets(data)])
    assert last_json(evaluated)["CIDEr"] == pytest.approx(summary["CIDEr"])  # the file reproduces the run
    assert "captioning on the test split" in evaluated.stdout
    # a model without a caption generator: a clear error, nothing written
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    refused = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_caption.py"), "--model", str(micro_export),
                              "--out", str(tmp_path / "never.json"), *sets(data)], capture_output=True, text=True,
                             env=env, timeout=120)
    assert refused.returncode == 2 and "no caption generator" in refused.stderr
    assert not (tmp_path / "never.json").exists()


def test_msrvtt_and_vatex_caption_configs(twins, micro_export, tmp_path):
    for name, data in (
        ("caption_msrvtt.yaml", {"data.msrvtt.annotation_dir": twins / "msrvtt", "data.msrvtt.video_dir": twins / "msrvtt" / "videos"}),
        ("caption_vatex.yaml", {"data.vatex.annotation_dir": twins / "vatex", "data.vatex.video_dir": twins / "vatex" / "videos"}),
    ):
        out = tmp_path / name
        summary = last_json(run("finetune_caption.py", ["--config", str(CONFIGS / name), *sets({
            **CAPTION_SIZES, **data, "model.init_from": micro_export, "train.output_dir": out})]))
        assert summary["split"] == "test" and "CIDEr" in summary, name
        head = json.loads((out / "model" / "config.json").read_text())["architecture"]["heads"]["caption"]
        assert head["max_words"] == (48 if "vatex" in name else 32)


def test_probe_configs_on_esc50_and_ucf101_twins(twins, synthetic_root, micro_export, tmp_path):
    fast = {"probe.weight_decays": "[0.0001, 0.1]", "probe.max_iter": 50}
    esc = run("linear_probe.py", ["--model", str(micro_export), "--config", str(CONFIGS / "probe_esc50.yaml"),
                                  "--no-progress", *sets({**fast, "data.esc50.root": twins / "esc50",
                                                          "train.output_dir": tmp_path / "esc"})])
    report = last_json(esc)["esc50"]
    assert len(report["rows"]["linear audio"]["folds"]) == 5 and report["skipped"] == 0
    assert set(report["rows"]["linear audio"]["weight_decay"]) <= {0.0001, 0.1}
    assert any(row.startswith("zero-shot a: the sound of a") for row in report["rows"])
    assert "ESC-50: accuracy (%) per fold" in esc.stdout
    shards = sorted((tmp_path / "esc" / "features" / "esc50").rglob("shard_*.pt"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert shards
    # a second mode reuses the cached features: nothing extracted again
    again = run("linear_probe.py", ["--model", str(micro_export), "--config", str(CONFIGS / "probe_esc50.yaml"),
                                    "--no-progress", *sets({**fast, "data.esc50.root": twins / "esc50",
                                                            "train.output_dir": tmp_path / "esc", "probe.mode": "zero_shot"})])
    assert list(last_json(again)["esc50"]["rows"]) == [r for r in report["rows"] if r.startswith("zero-shot")]
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    ucf = last_json(run("linear_probe.py", [
        "--model", str(micro_export), "--config", str(CONFIGS / "probe_ucf101.yaml"), "--no-progress",
        *sets({**fast, "data.ucf101.list_dir": twins / "ucf101" / "ucfTrainTestlist",
               "data.ucf101.video_dir": twins / "ucf101" / "UCF-101", "train.output_dir": tmp_path / "ucf"})]))["ucf101"]
    assert len(ucf["rows"]["linear video+audio"]["folds"]) == 3
    assert {"zero-shot v: a video of {}", "zero-shot av: a video of {}"} <= set(ucf["rows"])
    # the default config: the synthetic set laid out as both, probed in one run
    both = last_json(run("linear_probe.py", ["--model", str(micro_export), "--no-progress", *sets({
        **fast, "data.synthetic.root": synthetic_root, "data.synthetic.clips": 24, "train.output_dir": tmp_path / "syn"})]))
    assert {"esc50", "ucf101"} <= set(both) and (tmp_path / "syn" / "probe.json").is_file()


def test_manifest_configs_then_evaluation(synthetic_root, micro_export, tmp_path):
    """Your own media: a CSV over videos with sound, silent videos, sound files alone and windows of
    longer files, through pre-training, retrieval and caption fine-tuning and both evaluations."""
    manifest = write_corpus_format(synthetic_root, "manifest", tmp_path / "mine") / "manifest.csv"
    rows = manifest.read_text().splitlines()
    assert any(".wav," in r for r in rows) and any(r.split(",")[2:4] != ["", ""] for r in rows[1:])
    data = {"data.manifest.path": manifest, "model.init_from": micro_export}
    pre = last_json(run("pretrain.py", ["--config", str(CONFIGS / "pretrain_manifest.yaml"), *sets({
        **{k: v for k, v in FINETUNE_SIZES.items() if not k.startswith("retrieval.")}, **data,
        "train.output_dir": tmp_path / "pre"})]))
    assert pre["split"] == "test" and pre.get("skipped", 0) == 0 and {"t2a", "v2a"} <= set(pre)
    out = tmp_path / "ft"
    ft = last_json(run("finetune_retrieval.py", ["--config", str(CONFIGS / "finetune_manifest.yaml"), *sets({
        **FINETUNE_SIZES, **data, "train.output_dir": out})]))
    assert ft["split"] == "test" and ft["skipped"] == 0
    assert ft["av"]["n_texts"] == 5 * ft["av"]["n_videos"]  # every caption of a clip is a query
    evaluated = last_json(run("evaluate_retrieval.py", ["--model", str(out / "model"), "--config",
                                                        str(CONFIGS / "finetune_manifest.yaml"),
                                                        *sets({"data.manifest.path": manifest})]))
    assert evaluated["av"] == ft["av"]
    cap_out = tmp_path / "cap"
    cap = last_json(run("finetune_caption.py", ["--config", str(CONFIGS / "finetune_caption_manifest.yaml"), *sets({
        **CAPTION_SIZES, **data, "train.output_dir": cap_out})]))
    assert cap["split"] == "test" and "CIDEr" in cap
    references = json.loads((cap_out / "captions_test.json").read_text())["references"]
    assert all(len(refs) == 5 for refs in references.values())  # all captions of a file are its references
    again = last_json(run("evaluate_caption.py", ["--model", str(cap_out / "model"), "--config",
                                                  str(CONFIGS / "finetune_caption_manifest.yaml"), "--beam", "2",
                                                  "--out", str(tmp_path / "eval.json"),
                                                  *sets({"data.manifest.path": manifest})]))
    assert again["CIDEr"] == pytest.approx(cap["CIDEr"])
