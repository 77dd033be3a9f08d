"""The ablation driver (scripts/ablate.py, clip4vla.train.ablation): a micro table of two rows that
writes its JSON/Markdown table, skips finished rows, resumes a killed one bitwise and refuses a
finished row trained with another config; configs/ablations/table5.yaml through its script."""

from __future__ import annotations

import importlib.util
import shutil
import json
import os
import re
import socket
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clip4vla.train.ablation import (AblationError, format_table, load_table, markdown_table, run_ablation,
                                     table_path)

from conftest import PRETRAIN_CLIPS

REPO = Path(__file__).resolve().parent.parent
ABLATIONS = REPO / "configs" / "ablations"
# every table file -> the test that runs it through scripts/ablate.py
TABLE_RUNS = {"table5.yaml": "test_table5_runs_through_its_script"}


def micro(root: Path) -> list[str]:
    """Overrides for a seconds-long run of every stage on the 24-clip synthetic set."""
    return [f"{k}={v}" for k, v in {
        "model.arch": "micro", "data.synthetic.root": root, "data.synthetic.clips": PRETRAIN_CLIPS,
        "data.max_frames": 2, "audio.max_segments": 2, "train.batch_size": 4, "train.max_steps": 2,
        "train.log_every": 1, "train.checkpoint_every_steps": 1, "train.keep_last": 5, "train.device": "cpu",
    }.items()]


TWO_ROWS = {
    "name": "micro",
    "title": "Micro table",
    "common": ["model.train_clip=false", "pretrain.text_video=false"],
    "rows": [
        {"name": "Scratch", "set": ["model.audio_init=scratch", "pretrain.video_audio=false", "pretrain.intra_modal=false"]},
        {"name": "+Initial", "set": ["model.audio_init=vision", "pretrain.video_audio=false", "pretrain.intra_modal=false"]},
    ],
    "synthetic": {"stage0": ["pretrain.intra_modal=false"], "rows": ["train.eval_every_epochs=100"]},
}


def load_script():
    """scripts/ablate.py as a module: its main() in-process is the command without a new interpreter."""
    spec = importlib.util.spec_from_file_location("ablate", REPO / "scripts" / "ablate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_every_table_file_is_run_by_a_test():
    assert sorted(p.name for p in ABLATIONS.glob("*.yaml")) == sorted(TABLE_RUNS)
    source = Path(__file__).read_text()
    for name, test in TABLE_RUNS.items():
        assert f"def {test}(" in source
        assert load_table(ABLATIONS / name).rows


def test_micro_table_skips_finished_rows_and_resumes_a_killed_one(synthetic_root, tmp_path):
    table_file = tmp_path / "micro.yaml"
    table_file.write_text(yaml.safe_dump(TWO_ROWS))
    table = load_table(table_file)
    out = tmp_path / "ablation"
    config = REPO / "configs" / "pretrain_synthetic.yaml"
    first = run_ablation(table, config, micro(synthetic_root), seeds=[0], out_dir=out)

    assert [r["name"] for r in first["rows"]] == ["Scratch", "+Initial"]
    assert set(first["runs"].values()) == {"trained"} and first["stage0"]
    for row in first["rows"]:
        stats = row["results"]["synthetic/test"]
        assert set(stats) >= {"R1", "R5", "R10", "MedR", "n_clips", "chance"}
        assert stats["R1"]["values"] == [stats["R1"]["mean"]] and 0 <= stats["R1"]["mean"] <= 100
    on_disk = json.loads((out / "micro.json").read_text())
    assert on_disk["rows"] == first["rows"]
    md = (out / "micro.md").read_text()
    assert "| 1 | Scratch |" in md and "| 2 | +Initial |" in md and "synthetic/test R@1" in md
    assert "chance" in md and "paper" not in md  # the paper reports no synthetic numbers
    # each row trained as an ordinary run in its own folder, from stage 0's CLIP towers
    row2 = out / "seed0" / "2_initial"
    assert (row2 / "model" / "model.safetensors").is_file() and (row2 / "metrics.jsonl").is_file()
    used = yaml.safe_load((row2 / "config.yaml").read_text())
    assert used["model"]["init_from"] == str(out / "stage0" / "clip_towers.pt")
    assert used["model"]["audio_init"] == "vision" and used["pretrain"]["video_audio"] is False
    assert used["model"]["train_clip"] is False and used["data"]["test_split"] is None
    final = torch.load(row2 / "checkpoints" / "ckpt_000002.pt", weights_only=True)["model"]

    # re-running the command: nothing trained again, the same table
    again = run_ablation(table, config, micro(synthetic_root), seeds=[0], out_dir=out)
    assert set(again["runs"].values()) == {"skipped"} and again["rows"] == first["rows"]

    # row 2 killed after its first step: its model, its score and its last checkpoint never written
    shutil.rmtree(row2 / "model")
    for name in ("ablation_eval.json", "checkpoints/ckpt_000002.pt"):
        (row2 / name).unlink()
    resumed = run_ablation(table, config, micro(synthetic_root), seeds=[0], out_dir=out)
    assert list(resumed["runs"].values()) == ["skipped", "resumed"]
    again_final = torch.load(row2 / "checkpoints" / "ckpt_000002.pt", weights_only=True)["model"]
    for key in final:  # the loop's bitwise resume: the same weights as the uninterrupted row
        assert torch.equal(final[key], again_final[key]), key
    assert resumed["rows"] == first["rows"]
    steps = [json.loads(line)["step"] for line in (row2 / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2]

    # a finished row is reused only for the config it was trained with
    with pytest.raises(AblationError, match="trained with another config.*optim.lr"):
        run_ablation(table, config, [*micro(synthetic_root), "optim.lr=0.01"], seeds=[0], out_dir=out)


def test_table_layout_puts_the_papers_numbers_beside_msrvtt():
    table = load_table(table_path("5"))
    rows = []
    for i, row in enumerate(table.rows):
        stats = {m: {"mean": 10.0 + i, "std": 0.5, "min": 9.0, "max": 11.0, "values": [9.5, 10.5]}
                 for m in ("R1", "R5", "R10", "MedR")}
        stats.update(n_clips=884, chance={"R1": 0.1, "R5": 0.6, "R10": 1.1, "MedR": 442.5})
        rows.append({"row": i + 1, "name": row.name, "overrides": list(row.overrides),
                     "results": {"msrvtt/test": stats},
                     "paper": {c: dict(zip(("R1", "R5", "R10", "MedR"), v[i])) for c, v in table.paper.items()}})
    summary = {"title": table.title, "seeds": [0, 1], "evaluations": ["msrvtt/test"], "rows": rows}
    text = format_table(summary)
    assert "msrvtt/test (884 clips)   paper" in text and "mean ± std over 2 seeds" in text
    assert "10.0±0.5" in text
    line = next(l for l in text.splitlines() if "+Audio Type Token" in l)
    assert line.split()[-4:] == ["10.6", "26.5", "38.0", "19.0"]  # the paper's row 5 on MSR-VTT
    md = markdown_table(summary)
    assert "paper msrvtt R@1" in md and "| 14.0 ± 0.5 |" in md


def test_bad_tables_and_arguments_are_one_line_errors(tmp_path, capsys):
    script = load_script()

    def run(*args: str) -> str:
        assert script.main(list(args)) == 2
        return capsys.readouterr().err

    assert "error: --table 9: no configs/ablations/table9.yaml" in run("--table", "9")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{"name": "x", "set": ["model.audio_init"]}]}))
    assert "must look like key.path=value" in run("--table", str(bad), "--output-dir", str(tmp_path / "out"))
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"rows": [{"name": "x", "set": ["model.audio_initt=vision"]}],
                                    "synthetic": {"stage0": ["train.epochs=1"]}}))
    err = run("--table", str(typo), "--output-dir", str(tmp_path / "out"))
    assert "audio_initt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--seeds" in run("--seeds", "0", "0", "--output-dir", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before any work


def test_table5_runs_through_its_script(synthetic_root, tmp_path, capsys):
    out = tmp_path / "t5"
    sets = [a for s in micro(synthetic_root) + ["train.max_steps=1"] for a in ("--set", s)]
    code = load_script().main(["--table", "5", "--seeds", "0", "--output-dir", str(out), *sets])
    done = capsys.readouterr()
    assert code == 0, done.err[-3000:]
    summary = json.loads(done.out.strip().splitlines()[-1])
    assert [r["name"] for r in summary["rows"]] == ["Scratch", "+Initial", "+Inter-modal NCE", "+Intra-modal NCE",
                                                     "+Audio Type Token"]
    assert "Table 5 (impact of key components)" in done.out and (out / "table5.md").is_file()
    # what each row changed reached its run
    used = [yaml.safe_load((out / "seed0" / f).read_text()) for f in
            ("1_scratch/config.yaml", "3_inter_modal_nce/config.yaml", "5_audio_type_token/config.yaml")]
    assert used[0]["model"]["audio_init"] == "scratch" and used[0]["pretrain"]["video_audio"] is False
    assert used[1]["pretrain"]["video_audio"] is True and used[1]["pretrain"]["intra_modal"] is False
    assert used[2]["pretrain"]["intra_modal"] is True and used[2]["model"]["audio_type_token"] is True
    metrics = [json.loads(l) for l in (out / "seed0" / "1_scratch" / "metrics.jsonl").read_text().splitlines()]
    assert "aa" not in metrics[0] and "va" in metrics[0]  # row 1: no intra-modal term; video-audio monitored only


# ------------------------------------------------------------------ hostile input (issue 28)

ONE_ROW = {
    "name": "one",
    "common": ["model.train_clip=false", "pretrain.text_video=false"],
    "rows": [{"name": "Initial", "set": ["model.audio_init=vision", "pretrain.video_audio=false",
                                         "pretrain.intra_modal=false"]}],
}


def hints_work(message: str) -> None:
    """Every flag a message suggests is one of ablate.py's (a hint must be a command that works)."""
    parser = load_script().build_parser()
    known = {flag for action in parser._actions for flag in action.option_strings}
    suggested = set(re.findall(r"(?<![\w.-])--[a-z][a-z-]*", message))
    assert suggested <= known, f"{sorted(suggested - known)} are not ablate.py flags: {message}"


def one_row_args(root: Path, clip: Path, out: Path, table: Path, *extra: str) -> list[str]:
    settings = [*micro(root), f"model.init_from={clip}", "model.activation=quick_gelu", *extra]
    sets = [a for s in settings for a in ("--set", s)]
    return ["--table", str(table), "--seeds", "0", "--output-dir", str(out), *sets]


def test_a_finished_row_is_reused_only_under_every_key_that_shapes_its_result(tmp_path):
    from clip4vla.config import PretrainConfig, load_config, save_config
    from clip4vla.train.ablation import NOT_THE_RESULT, _check_same_config

    # what may change under a finished row: where and how it is watched, never what it trains
    assert NOT_THE_RESULT == {"train.output_dir", "train.tensorboard", "train.device", "train.dist_timeout_s",
                              "train.keep_last", "train.log_every", "train.checkpoint_every_steps",
                              "data.num_workers", "train.card.name", "train.card.license", "train.card.description",
                              "train.card.tags", "train.card.datasets"}
    folder = tmp_path / "row"
    config = load_config(PretrainConfig, None, ["model.init_from=/weights/a.pt", f"train.output_dir={folder}"])
    save_config(config, folder / "config.yaml")
    _check_same_config(folder, load_config(PretrainConfig, None, ["model.init_from=/weights/a.pt",
                                                                    "train.log_every=1", "train.tensorboard=true",
                                                                    f"train.output_dir={tmp_path / 'moved'}"]), "row")
    with pytest.raises(AblationError, match=r"model\.init_from: '/weights/a\.pt' -> '/weights/b\.pt'") as err:
        _check_same_config(folder, load_config(PretrainConfig, None, ["model.init_from=/weights/b.pt",
                                                                        f"train.output_dir={folder}"]), "row")
    hints_work(str(err.value))


def test_every_argument_and_row_is_checked_before_the_first_step(synthetic_root, tmp_path, capsys):
    table = tmp_path / "two.yaml"
    table.write_text(yaml.safe_dump(TWO_ROWS))
    out = tmp_path / "out"
    script = load_script()
    sets = [a for s in micro(synthetic_root) for a in ("--set", s)]

    def refused(*args: str) -> str:
        assert script.main(["--table", str(table), "--seeds", "0", "--output-dir", str(out), *sets, *args]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert not out.exists(), "work started before the error"
        hints_work(err)
        return err

    assert "unknown corpus 'nope'" in refused("--eval-corpus", "nope")
    assert "data.vatex is not configured" in refused("--eval-corpus", "vatex")
    assert "/nowhere/ViT-B-32.pt" in refused("--set", "model.init_from=/nowhere/ViT-B-32.pt")


def test_damaged_row_folders_name_the_file_and_a_fix_that_works(synthetic_root, micro_openai_clip, tmp_path, capsys):
    table = tmp_path / "one.yaml"
    table.write_text(yaml.safe_dump(ONE_ROW))
    out = tmp_path / "out"
    script = load_script()
    args = one_row_args(synthetic_root, micro_openai_clip, out, table)
    assert script.main(args) == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    row = out / "seed0" / "1_initial"
    config, scores = (row / "config.yaml").read_text(), (row / "ablation_eval.json").read_text()

    def refused(*extra: str) -> str:
        assert script.main(one_row_args(synthetic_root, micro_openai_clip, out, table, *extra)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        hints_work(err)
        return err

    # another start file: the row is not reused (its numbers are another model's)
    other = tmp_path / "other-clip.pt"
    other.write_bytes(micro_openai_clip.read_bytes())
    err = refused(f"model.init_from={other}")
    assert "model.init_from" in err and str(row) in err

    for damaged, what in (("model: [unclosed\n", "is not readable YAML"), ("- a\n- b\n", "not a config")):
        (row / "config.yaml").write_text(damaged)
        err = refused()
        assert f"{row / 'config.yaml'}" in err and what in err and f"rm -r {row}" in err
    (row / "config.yaml").write_text(config)

    (row / "ablation_eval.json").write_text(scores[: len(scores) // 2])
    err = refused()
    assert f"{row / 'ablation_eval.json'}" in err and f"rm {row / 'ablation_eval.json'}" in err
    (row / "ablation_eval.json").unlink()  # the fix it names: the row is scored again, not trained
    assert script.main(args) == 0
    assert '"runs": {"seed 0 row 1 (Initial)": "skipped"}' in capsys.readouterr().out


def test_the_hints_of_a_stopped_or_blocked_row_are_ablate_commands(synthetic_root, micro_openai_clip, tmp_path,
                                                                      capsys, monkeypatch):
    from clip4vla.train import loop, run_folder

    table = tmp_path / "one.yaml"
    table.write_text(yaml.safe_dump(ONE_ROW))
    out = tmp_path / "out"
    script = load_script()
    args = one_row_args(synthetic_root, micro_openai_clip, out, table)
    row = out / "seed0" / "1_initial"

    # a scheduler's SIGTERM during the row: the ablation continues by running the same command again
    with monkeypatch.context() as patch:
        patch.setattr(loop.SigtermStop, "requested", lambda self, device: True)
        assert script.main(args) == 143
    err = capsys.readouterr().err
    assert "re-run the same command" in err and "--resume" not in err
    hints_work(err)
    # ... not with another config: the killed row's checkpoint is of the old one
    assert script.main(one_row_args(synthetic_root, micro_openai_clip, out, table, "optim.lr=0.01")) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "--allow-config-change" not in err
    hints_work(err)

    # the model file cannot be written (a full disk)
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(run_folder, "export_model", full)
        assert script.main(args) == 2
    err = capsys.readouterr().err
    assert "model" in err and "re-run the same command" in err and "--resume" not in err
    hints_work(err)

    # another process holds the row's folder
    (row / ".run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "now"}))
    assert script.main(args) == 2
    err = capsys.readouterr().err
    assert "in use" in err and "train.output_dir" not in err
    hints_work(err)
    (row / ".run.lock").unlink()

    # a killed row that had validated but not checkpointed yet: it starts again (nothing to resume)
    for ckpt in (row / "checkpoints").glob("ckpt_*.pt"):
        ckpt.unlink()
    (row / "checkpoints" / "best.pt").write_bytes(b"weights of a killed run")
    assert script.main(args) == 0, capsys.readouterr().err[-3000:]


# ------------------------------------------------------------------ the dashboard (issue 29)

def scalars_of(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of one dashboard run, as TensorBoard's own reader sees it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_the_dashboard_works_in_the_readmes_order(synthetic_root, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    table_file = tmp_path / "micro.yaml"
    table_file.write_text(yaml.safe_dump(TWO_ROWS))
    table, out = load_table(table_file), tmp_path / "ablation"
    config = REPO / "configs" / "pretrain_synthetic.yaml"
    # the ablation first, on a machine without the package: the table, and how to get the dashboard
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "tensorboard", None)
        patch.setitem(sys.modules, "torch.utils.tensorboard", None)
        first = run_ablation(table, config, micro(synthetic_root), seeds=[0], out_dir=out)
    assert 'pip install -e ".[tensorboard]"' in capsys.readouterr().err and first["dashboard"] is None
    assert not (out / "tensorboard").exists()

    # then the package and the same command: nothing trained again, every finished run on the dashboard
    again = run_ablation(table, config, micro(synthetic_root), seeds=[0], out_dir=out)
    assert set(again["runs"].values()) == {"skipped"} and again["rows"] == first["rows"]
    rows = out / "tensorboard" / "rows"
    assert again["dashboard"] == str(rows)
    named = sorted(p.parent.relative_to(rows).as_posix() for p in rows.rglob("events.out.tfevents.*"))
    assert named == ["seed0/1_scratch", "seed0/2_initial"]  # runs named after their folders
    assert list((out / "tensorboard" / "stage0").glob("events.out.tfevents.*"))  # stage 0 apart from the rows

    series = scalars_of(rows / "seed0" / "2_initial")
    log = [json.loads(line) for line in (out / "seed0" / "2_initial" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in series["train/text_audio_nce"]] == [r["step"] for r in log if "ta" in r] == [1, 2]
    assert series["train/text_audio_nce"][0][1] == pytest.approx(log[0]["ta"])
    assert {"train/loss", "train/video_audio_nce", "train/learning_rate", "val/text_to_audio_R1",
            "val/video_to_audio_median_rank", "val/mean_text_and_video_to_audio_R1"} <= set(series)
    # the row's final test table: its score in the ablation's table, at its last step
    r1 = first["rows"][1]["results"]["synthetic/test"]["R1"]["mean"]
    assert series["test/synthetic_text_to_audio_R1"] == [(2, pytest.approx(r1, abs=1e-4))]
    assert "test/synthetic_text_to_audio_median_rank" in series
    stage0 = scalars_of(out / "tensorboard" / "stage0")
    assert "test/text_to_audio_R1" in stage0  # the loop logs a run's own test table

    # a third time: the events are written again, not added to
    run_ablation(table, config, micro(synthetic_root), seeds=[0], out_dir=out)
    assert scalars_of(rows / "seed0" / "2_initial") == series
    assert "train.log_every=1" in load_table(table_path("5")).synthetic_rows  # curves, not dots, per row
