"""Hostile input to training runs and model files: each case is refused at start-up with a message
naming what is wrong (exit status 2 from a script), or handled without losing work.

Cases are numbered as in the hostile-input review of the fine-tuning paths (issue 23).
"""

from __future__ import annotations

import errno
import json
import shutil
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip4vla import load_model
from clip4vla.config import CaptionConfig, ConfigError, PretrainConfig, RetrievalConfig, load_config
from clip4vla.models.captioner import CaptionGenerator
from clip4vla.models.checkpoints import export_model
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.fusion import FusionHead
from clip4vla.models.heads import attach_caption_head, attach_fusion_head
from clip4vla.models.loading import CheckpointError
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.train import run_folder
from clip4vla.train.loop import Trainer
from clip4vla.train.pretrain import PretrainTask
from clip4vla.train.resume import check_resume_config
from clip4vla.train.retrieval import RetrievalTask
from clip4vla.train.run_folder import LOCK_NAME, RunFolderLocked, RunLock
from conftest import PRETRAIN_CLIPS, micro_pretrain_settings

REPO = Path(__file__).resolve().parent.parent
PRE = Preprocessing(max_frames=2, max_segments=2)


def micro_with_head(name: str, **head: int) -> CLIP4VLA:
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.micro())
    if name == "fusion":
        model.attach_head("fusion", FusionHead.from_clip(model.clip, "g2g", **head))
    else:
        model.attach_head("caption", CaptionGenerator.from_clip(model.clip, **head))
    return model


def retrieval_config(root: Path, out: Path, init: Path, *extra: str) -> RetrievalConfig:
    return load_config(RetrievalConfig, None, [
        f"model.init_from={init}", f"data.synthetic.root={root}", f"data.synthetic.clips={PRETRAIN_CLIPS}",
        "data.max_frames=2", "audio.max_segments=2", "data.num_workers=0", "train.batch_size=4",
        "train.epochs=1", "train.checkpoint_every_steps=1", "train.log_every=1", "train.device=cpu",
        f"train.output_dir={out}", *extra,
    ])


def pretrain_args(root: Path, out: Path, **extra: object) -> list[str]:
    settings = {**micro_pretrain_settings(root, out), "train.batch_size": 4, "train.max_steps": 2, "data.val_split": "null",
                **extra}
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


def run_pretrain(argv: list[str], capsys) -> tuple[int, str, str]:
    """scripts/pretrain.py in this process (no interpreter start-up per case)."""
    from clip4vla.train.cli import run_training

    code = run_training("test", PretrainConfig, PretrainTask, REPO / "configs" / "pretrain_synthetic.yaml", argv)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------ 3. a head of init_from must be the config's
def test_an_existing_head_of_another_architecture_is_refused_naming_the_keys():
    model = micro_with_head("fusion", layers=1)
    with pytest.raises(ConfigError, match=r"retrieval.fusion_layers=3 but the head has layers=1"):
        attach_fusion_head(model, "g2g", 3)
    with pytest.raises(ConfigError, match=r"retrieval.fusion='g2l' but the head has mode='g2g'"):
        attach_fusion_head(model, "g2l", 1)
    assert attach_fusion_head(model, "g2g", 1) is model.heads["fusion"]  # the same head: fine-tuned further

    model = micro_with_head("caption", max_words=16, layers=1)
    with pytest.raises(ConfigError, match=r"caption.fusion_layers=2 but the head has layers=1"):
        attach_caption_head(model, 16, 2)
    with pytest.raises(ConfigError, match=r"data.max_words=32 but the head has max_words=16"):
        attach_caption_head(model, 32, 1)


# ------------------------------------------------------------- 4. one run per output folder
def test_the_output_folder_lock_names_its_holder_and_stale_locks_are_taken_over(tmp_path, caplog):
    first = RunLock(tmp_path)
    first.acquire()
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid()
    with pytest.raises(RunFolderLocked, match=rf"in use by another run \(process {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder["pid"] = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert f"its process {holder['pid']} is gone" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()

    holder["host"] = "another-node"  # we cannot tell whether it runs: refused, with the way out
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(RunFolderLocked, match=rf"on another-node .*delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


def test_two_runs_started_at_once_in_one_folder_one_is_refused(synthetic_root, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(REPO / "scripts" / "pretrain.py"), *pretrain_args(synthetic_root, out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err in results]
    refused = next(err for code, _, err in results if code == 2)
    assert "is in use by another run (process" in refused and "Traceback" not in refused
    assert not (out / LOCK_NAME).exists()  # released by the run that finished


def test_a_run_refused_by_the_lock_writes_nothing(synthetic_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(), "started": "now"}))
    monkeypatch.setattr(PretrainTask, "datasets", lambda self: pytest.fail("data work before the lock"))
    config = load_config(PretrainConfig, None, [f"{k}={v}" for k, v in micro_pretrain_settings(synthetic_root, out).items()])
    with pytest.raises(RunFolderLocked):
        Trainer(config, PretrainTask)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # not even an empty checkpoints/


# ------------------------------------------------------------ 7. non-finite weights in a file
def test_a_model_file_with_non_finite_weights_is_refused_naming_the_tensor(micro_legacy, tmp_path):
    state = torch.load(micro_legacy, weights_only=True)
    state["state_dict"]["audio.type_embedding"][0, 0] = float("nan")
    torch.save(state, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match=r"diverged.pt: non-finite weights .* audio.type_embedding"):
        load_model(tmp_path / "diverged.pt")


# ---------------------------------------- 10. a bad init_from is read before any data work
@pytest.mark.parametrize("content", [random.Random(0).randbytes(3000), b"this is a text file, not weights\n" * 20],
                         ids=["random-bytes", "text"])
def test_an_unreadable_init_from_fails_before_any_data_work(content, synthetic_root, tmp_path, monkeypatch):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(content)
    monkeypatch.setattr(RetrievalTask, "datasets", lambda self: pytest.fail("data work before the init file check"))
    with pytest.raises(CheckpointError, match=r"weights.pt: cannot read checkpoint: not a PyTorch file") as err:
        Trainer(retrieval_config(synthetic_root, tmp_path / "run", bad), RetrievalTask)
    assert "weights_only=False" not in str(err.value)


def test_a_file_with_foreign_pickled_objects_is_refused_without_torch_advice(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "step": 1, "extra": Preprocessing()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="pickled objects other than tensors") as err:
        load_model(tmp_path / "pickled.pt")
    assert "weights_only=False" not in str(err.value)


# ------------------------------------------ 12. a failed export still prints the test table
def test_a_full_disk_at_export_prints_the_table_and_names_the_folder(synthetic_root, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder, "export_model", full)
    code, out, err = run_pretrain(pretrain_args(synthetic_root, tmp_path / "run"), capsys)
    assert code == 1, err[-2000:]
    assert "zero-shot retrieval on the test split" in out
    assert f"error: {tmp_path / 'run' / 'model'} was not written: no space left on" in err
    assert "--resume" in err


# ------------------------------------------- 14. a resume never reads init_from
def test_a_fine_tune_resumes_without_its_init_from_file(micro_export, synthetic_root, tmp_path):
    init = tmp_path / "init"
    shutil.copytree(micro_export, init)
    out = tmp_path / "run"
    Trainer(retrieval_config(synthetic_root, out, init, "train.max_steps=1"), RetrievalTask).fit()
    shutil.rmtree(init)  # gone: the checkpoint holds every weight
    resumed = Trainer(retrieval_config(synthetic_root, out, init, "train.max_steps=2"), RetrievalTask, resume=True)
    assert resumed.step == 1
    resumed.fit()
    assert load_model(out / "model").heads["fusion"].config.mode == "g2g"
    # another file in its place is not read either (nor a reason to refuse the resume)
    Path(init).write_bytes(b"not weights")
    Trainer(retrieval_config(synthetic_root, out, init, "train.max_steps=2"), RetrievalTask, resume=True).close()


# ------------------------------------------- 15. start-up messages, not tracebacks
@pytest.mark.parametrize("override, message", [
    ("train.batch_size=64", "cannot fill one global batch of 64"),
    ("data.audio_pairs={tmp}/pairs.json", "pairs.json"),
])
def test_start_up_value_errors_exit_2_with_the_message(override, message, synthetic_root, tmp_path, capsys):
    (tmp_path / "pairs.json").write_text("[1, 2")
    argv = pretrain_args(synthetic_root, tmp_path / "run") + ["--set", override.format(tmp=tmp_path)]
    code, _, err = run_pretrain(argv, capsys)
    assert code == 2, err[-2000:]
    assert err.splitlines()[-1].startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("cls, override, message", [
    (RetrievalConfig, "retrieval.init_scale=0", "retrieval.init_scale=0.0: is the contrastive logit scale"),
    (RetrievalConfig, "retrieval.init_scale=.inf", "retrieval.init_scale=inf: must be a finite number"),
    (PretrainConfig, "pretrain.init_scale=-1", "pretrain.init_scale=-1.0: is the contrastive logit scale"),
    (PretrainConfig, "data.max_words=200", "data.max_words=200: must lie in [3, 77]"),
    (PretrainConfig, "train.seed=-1", "train.seed=-1: must be >= 0"),
    (PretrainConfig, "optim.lr=.nan", "optim.lr=nan: must be a finite number"),
    (CaptionConfig, "caption.beam=100000", "caption.beam=100000: must lie in [1, 64]"),
    (CaptionConfig, "caption.length_penalty=.inf", "caption.length_penalty=inf: must be a finite number"),
])
def test_values_no_run_can_use_are_refused_when_the_config_loads(cls, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, [override])
    assert message in str(err.value)


def test_a_cuda_device_on_a_machine_without_one_is_a_start_up_error(synthetic_root, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = run_pretrain(pretrain_args(synthetic_root, tmp_path / "run", **{"train.device": "cuda"}), capsys)
    assert code == 2 and "torch sees no CUDA GPU" in err and "Traceback" not in err


# ------------------------------------------- 16. architecture changes on resume
def test_an_architecture_change_on_resume_names_the_keys_without_a_useless_flag():
    stored = {"model": {"arch": "micro", "init_from": None}, "retrieval": {"fusion": "g2l", "fusion_layers": 4}}
    new = {"model": {"arch": "micro", "init_from": "elsewhere.pt"}, "retrieval": {"fusion": "g2g", "fusion_layers": 4}}
    for allow in (False, True):
        with pytest.raises(ConfigError) as err:
            check_resume_config(stored, new, allow, "ckpt.pt")
        message = str(err.value)
        assert "architecture cannot change on resume (retrieval.fusion was 'g2l', now 'g2g')" in message
        assert "--allow-config-change" not in message and "init_from" not in message and len(message) < 300


# ------------------------------------------- 19. crafted model files
@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("architecture"), "without a valid 'architecture' record"),
    (lambda s: s.update(architecture=[1, 2]), "without a valid 'architecture' record"),
    (lambda s: s["architecture"].pop("clip"), "malformed architecture record"),
    (lambda s: s["architecture"]["clip"].update(vision_width=-8), r"vision_width=-8 \(expected whole numbers"),
    (lambda s: s["architecture"]["clip"].update(bogus=1), "malformed architecture record"),
    (lambda s: s["architecture"].update(audio_type_token="yes"), "malformed architecture record"),
    (lambda s: s["architecture"].update(heads={"fusion": {"mode": "zzz"}}), "builds no model"),
    (lambda s: s["architecture"].update(heads={"fusion": "g2g"}), "head 'fusion': malformed record"),
    (lambda s: s["preprocessing"].update(max_frames=-3), r"preprocessing max_frames=-3"),
    (lambda s: s["preprocessing"].update(frontend="other"), r"preprocessing frontend='other'"),
    (lambda s: s["preprocessing"].update(audio_type=7), r"preprocessing audio_type=7"),
    (lambda s: s.update(state_dict={"a": "b"}), "not a tensor"),
])
def test_crafted_model_file_records_are_checkpoint_errors(mutate, message, micro_legacy, tmp_path):
    state = torch.load(micro_legacy, weights_only=True)
    mutate(state)
    torch.save(state, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match=rf"crafted\.pt: .*{message}"):  # the file, then what is wrong
        load_model(tmp_path / "crafted.pt")


# ------------------------------------------- 22. --output-dir ""
def test_an_empty_output_dir_flag_is_refused_not_ignored(synthetic_root, tmp_path, capsys):
    code, _, err = run_pretrain([*pretrain_args(synthetic_root, tmp_path / "run"), "--output-dir", ""], capsys)
    assert code == 2 and "train.output_dir='': must name a folder" in err


# ------------------------------------------- 23. heads a run does not train are not exported
def test_a_retrieval_fine_tune_drops_the_caption_head_it_does_not_train(synthetic_root, tmp_path, caplog):
    init = export_model(micro_with_head("caption", max_words=32, layers=1), tmp_path / "caption.pt", PRE)
    trainer = Trainer(retrieval_config(synthetic_root, tmp_path / "run", init), RetrievalTask)
    assert sorted(trainer.model.heads) == ["fusion"]
    assert "caption head is not trained by this retrieval run" in caplog.text
    trainer.close()


# ------------------------------------------- 24. a directory where a synthetic clip belongs
def test_a_directory_in_place_of_a_synthetic_clip_is_a_message(tmp_path, capsys):
    root = tmp_path / "synthetic"
    (root / "videos" / "video3.mp4").mkdir(parents=True)
    started = time.time()
    code, _, err = run_pretrain(pretrain_args(root, tmp_path / "run"), capsys)
    assert code == 2, err[-2000:]
    assert "video3.mp4 is not a file but a synthetic clip belongs there" in err and "Traceback" not in err
    assert time.time() - started < 120
