"""The dashboard: TensorBoard events carry metrics.jsonl's numbers (read back with TensorBoard's own
reader, also after a killed run is resumed), a clear start-up error without the package, and
scripts/plot_runs.py for people who do not run TensorBoard."""

from __future__ import annotations

import contextlib
import shutil
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clip4vla.config import ConfigError, PretrainConfig, load_config
from conftest import micro_pretrain_settings

REPO = Path(__file__).resolve().parent.parent


def trainer(root: Path, out: Path, resume: bool = False, **extra: object):
    from clip4vla.train.loop import Trainer
    from clip4vla.train.pretrain import PretrainTask

    settings = {**micro_pretrain_settings(root, out), "train.batch_size": 4, "train.max_steps": 4,
                "train.eval_every_steps": 2, "train.tensorboard": True, "train.device": "cpu", **extra}
    config = load_config(PretrainConfig, None, [f"{k}={v}" for k, v in settings.items()])
    return Trainer(config, PretrainTask, resume=resume)


def events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series as TensorBoard itself reads the run's event folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def logged(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's series under the dashboard's names (``ta`` -> ``train/text_audio_nce``)."""
    from clip4vla.plotting import metric_tag

    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(metric_tag(key), []).append((row["step"], float(value)))
    return series


def assert_same(run: Path) -> None:
    got, want = events(run), logged(run)
    assert set(got) == set(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # each step once, in order
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-6), tag


def test_events_match_metrics_jsonl_and_survive_a_resume(synthetic_root, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    t = trainer(synthetic_root, out)
    t.fit()
    t.close()
    tags = set(events(out))
    # losses, learning rate, throughput, skipped samples, every validation metric, the final test
    # table: spelled out, grouped by split
    assert {"train/loss", "train/text_audio_nce", "train/video_audio_nce", "train/audio_masked_audio_nce",
            "train/learning_rate", "train/samples_per_second", "train/skipped_samples", "val/text_to_audio_R1",
            "val/text_to_audio_median_rank", "val/mean_text_and_video_to_audio_R1", "test/text_to_audio_R1",
            "test/video_to_audio_R5"} <= tags
    assert all(tag.split("/")[0] in ("train", "val", "test") for tag in tags)
    assert_same(out)
    # as after a kill at step 4 whose last checkpoint was step 2: the old event file holds steps 3-4,
    # which the resumed run computes again; TensorBoard must show each step once, as metrics.jsonl
    for step in (3, 4):
        (out / "checkpoints" / f"ckpt_{step:06d}.pt").unlink()
    shutil.rmtree(out / "model")
    t = trainer(synthetic_root, out, resume=True)
    t.fit()
    t.close()
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    assert_same(out)


def test_tensorboard_on_without_the_package_is_a_start_up_error(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        trainer(synthetic_root, out)
    assert not out.exists()  # checked before any folder is made


def pretrain_main(root: Path, out: Path, *sets: str) -> int:
    """scripts/pretrain.py in-process (the micro run of trainer() above), its exit status."""
    spec = importlib.util.spec_from_file_location("pretrain", REPO / "scripts" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = {**micro_pretrain_settings(root, out), "train.batch_size": 4, "train.max_steps": 2,
                "train.tensorboard": True, "train.device": "cpu"}
    return module.main([a for s in [*(f"{k}={v}" for k, v in settings.items()), *sets] for a in ("--set", s)])


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable, for root too (the immutable flag) where chmod does not bind."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr: a read-only folder cannot be made")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_run_whose_event_folder_is_unusable_stops_before_making_anything(synthetic_root, tmp_path, capfd):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    events = out / "tensorboard"
    events.mkdir(parents=True)
    with read_only(events):
        assert pretrain_main(synthetic_root, out) == 2
    err = capfd.readouterr().err
    assert f"{events}" in err and "not writable" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]

    events.rmdir()
    events.write_text("a file where the event folder goes")
    assert pretrain_main(synthetic_root, out) == 2
    err = capfd.readouterr().err
    assert f"{events} is a file" in err and "Errno" not in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]


def test_a_failed_start_leaves_no_folders_behind(synthetic_root, tmp_path, capfd):
    out = tmp_path / "run"
    assert pretrain_main(synthetic_root, out, "train.tensorboard=false", "model.init_from=/nowhere/ViT-B-32.pt") == 2
    assert "/nowhere/ViT-B-32.pt" in capfd.readouterr().err
    assert not out.exists()
    out.mkdir()  # a folder the user made: kept, and left as it was
    assert pretrain_main(synthetic_root, out, "train.tensorboard=false", "model.init_from=/nowhere/ViT-B-32.pt") == 2
    assert out.is_dir() and not any(out.iterdir())


def test_plot_runs_draws_a_metric_of_several_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, lr in (("a", 1e-3), ("b", 1e-4)):
        folder = runs / name
        folder.mkdir(parents=True)
        rows = [{"step": s, "epoch": 0, "loss": 3.0 - s * lr * 100, "lr": lr} for s in range(1, 6)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = str(REPO / "scripts" / "plot_runs.py")
    png = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, script, str(runs), "--metric", "loss", "--out", str(png)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "loss of 2 runs" in done.stdout and "a: 5 points" in done.stdout  # the cut last line is left out
    # bad input: one line and exit 2, nothing written (in-process: the same main() as above)
    spec = importlib.util.spec_from_file_location("plot_runs", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for args, message in (([str(runs), "--metric", "val/t2a/R1"], "error: no run logged 'val/t2a/R1'; these did: "
                                                                   "epoch, loss, lr"),
                          ([str(tmp_path / "nowhere")], "no metrics.jsonl")):
        with pytest.raises(SystemExit) as stop:
            module.main([*args, "--out", str(tmp_path / "x.png")])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def plot_runs_main():
    spec = importlib.util.spec_from_file_location("plot_runs", REPO / "scripts" / "plot_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def write_log(folder: Path, rows: list[dict], tail: bytes = b"") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + tail)


def test_plot_runs_labels_seeds_of_one_row_and_reports_what_it_did(tmp_path, capsys):
    main = plot_runs_main()
    ablation = tmp_path / "ablation"
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "ta": 2.0 - 0.1 * s} for s in range(1, 6)]
    for seed in (0, 1):
        write_log(ablation / f"seed{seed}" / "1_scratch", rows)
    # a line broken in the middle of the log: skipped, and said so
    broken = b'{"step": 3, "ta": \n' + json.dumps(rows[3]).encode() + b"\n"
    write_log(ablation / "seed1" / "2_initial", rows[:2], broken)
    out = tmp_path / "plots" / "ta"
    scratch = [str(ablation / f"seed{seed}" / "1_scratch") for seed in (0, 1)]
    assert main([*scratch, "--metric", "ta", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "plots" / "ta.png").is_file() and not out.exists()
    assert printed.startswith(f"{out}.png: ta")  # the file it wrote, not the name it was given
    assert "seed0/1_scratch: 5 points" in printed and "seed1/1_scratch: 5 points" in printed
    assert main([str(ablation), "--metric", "ta", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed1/2_initial: 3 points (1 unreadable line of metrics.jsonl skipped)" in printed

    # a log that is not UTF-8 text: named, one line, exit 2
    (ablation / "seed0" / "1_scratch" / "metrics.jsonl").write_bytes(b'{"step": 1, "ta": 1.0}\n\xff\xfe\x00garbage\n')
    with pytest.raises(SystemExit) as stop:
        main([str(ablation), "--metric", "ta", "--out", str(out)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"{ablation / 'seed0' / '1_scratch' / 'metrics.jsonl'}: not UTF-8 text" in err


def test_plot_runs_spells_the_metric_out_and_keeps_equal_lines_visible(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from clip4vla.plotting import plot_runs

    figures = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1])
    rows = [{"step": s, "ta": 2.0 - 0.1 * s} for s in range(1, 30)]
    runs = [tmp_path / f"seed{seed}" / "1_scratch" for seed in range(3)]
    for run in runs:
        write_log(run, rows)  # three runs that agree: each line must still be seen
    plot_runs(runs, "ta", tmp_path / "ta.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "train/text_audio_nce  (ta in metrics.jsonl)"
    lines = ax.get_lines()
    assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 3
    assert all(line.get_alpha() is not None and line.get_alpha() < 1 for line in lines)
