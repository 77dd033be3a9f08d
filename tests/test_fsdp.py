"""``train.strategy: fsdp`` (issue 32): the real pre-training script under torchrun, 2 CPU ranks
(gloo), against DDP and one process on the same global batches.

FSDP2 shards the trainable towers' blocks; the gathered NCE losses and the feature-cached
accumulation must mean what they mean under DDP, so the three runs train the same weights after
every optimiser step (up to float32 summation order). FSDP checkpoints are folders of per-rank
shards (torch.distributed.checkpoint) that resume on another world size or strategy; at the same
world size an FSDP resume is bitwise, as a DDP one is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip4vla.models.sharded_reader import read_sharded_model
from conftest import micro_pretrain_settings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pretrain.py"
GLOBAL_BATCH = 4
STEPS = 3
ATOL = 1e-5  # as tests/test_pretrain_ddp.py: fp32 summation order, amplified by Adam's first steps


def run(tmp_path: Path, name: str, root: Path, nproc: int, *extra: str, resume: bool = False,
        clip: Path | None = None) -> subprocess.CompletedProcess:
    settings = micro_pretrain_settings(root, tmp_path / name)
    settings.update({"optim.lr": 2e-4, "train.device": "cpu", "train.epochs": 5, "train.batch_size": GLOBAL_BATCH,
                     "train.accum_steps": 2, "train.max_steps": STEPS, "train.keep_last": 100,
                     "train.eval_every_steps": STEPS})
    if clip is not None:  # frozen text and vision towers from a CLIP file, as the paper pre-trains
        settings.update({"model.init_from": clip, "model.activation": "quick_gelu", "model.train_clip": False})
        settings["model.arch"] = "null"  # the file's
    args = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    args += [arg for item in extra for arg in ("--set", item)] + (["--resume"] if resume else [])
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    prefix = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                 if nproc > 1 else [])
    done = subprocess.run([*prefix, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-4000:]}"
    return done


def weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The full weights of checkpoint ``step``: a sharded folder (FSDP) or a single file."""
    folder = out / "checkpoints" / f"ckpt_{step:06d}"
    if folder.is_dir():
        return read_sharded_model(folder)
    return torch.load(folder.with_suffix(".pt"), map_location="cpu", weights_only=True)["model"]


def copy_run(source: Path, target: Path, *steps: int) -> None:
    """A run folder as a kill after the last of ``steps`` leaves it (those checkpoints only)."""
    (target / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(source / name, target / name)
    for step in steps:
        for name in (f"ckpt_{step:06d}", f"ckpt_{step:06d}.pt"):
            if (source / "checkpoints" / name).is_dir():
                shutil.copytree(source / "checkpoints" / name, target / "checkpoints" / name)
            elif (source / "checkpoints" / name).is_file():
                shutil.copy(source / "checkpoints" / name, target / "checkpoints" / name)


def worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable-towers", "frozen-clip"])
def test_fsdp_trains_what_ddp_and_one_process_train(synthetic_root, micro_openai_clip, tmp_path, frozen):
    clip = micro_openai_clip if frozen else None
    # activation checkpointing composes with the sharding (the trainable towers recompute their blocks)
    fsdp = run(tmp_path, "fsdp", synthetic_root, 2, "train.strategy=fsdp", f"model.grad_checkpointing={not frozen}",
               clip=clip)
    assert "tower blocks sharded over 2 ranks" in fsdp.stderr
    run(tmp_path, "ddp", synthetic_root, 2, clip=clip)
    run(tmp_path, "one", synthetic_root, 1, clip=clip)
    previous = None
    for step in range(1, STEPS + 1):
        one, ddp, sharded = (weights(tmp_path / name, step) for name in ("one", "ddp", "fsdp"))
        assert worst(sharded, ddp) <= ATOL and worst(sharded, one) <= ATOL, step
        if previous is not None:  # the weights move far more per step than the runs differ
            moved = sum(((one[k] - previous[k]).double() ** 2).sum() for k in one) ** 0.5
            apart = sum(((one[k] - sharded[k]).double() ** 2).sum() for k in one) ** 0.5
            assert moved > 10 * apart, (moved, apart)
        previous = one
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), rel=1e-4, abs=1e-5)
    # evaluation, best.pt and the model folder come from the gathered weights, on the main rank
    summary = json.loads(fsdp.stdout.strip().splitlines()[-1])
    assert summary["split"] == "test" and {"t2a", "v2a"} <= set(summary)
    from clip4vla import from_pretrained

    exported = from_pretrained(tmp_path / "fsdp" / "model").state_dict()
    assert worst(exported, weights(tmp_path / "fsdp", STEPS)) == 0.0
    if frozen:  # frozen towers are not sharded: they stay the CLIP file's weights
        start = torch.load(micro_openai_clip, weights_only=True)
        assert torch.equal(exported["clip.visual.proj"], start["visual.proj"])


def test_fsdp_checkpoints_resume_bitwise_and_on_another_world_size(synthetic_root, tmp_path):
    run(tmp_path, "straight", synthetic_root, 2, "train.strategy=fsdp")
    final = weights(tmp_path / "straight", STEPS)
    # each rank wrote its shard; trainer.pt holds no weights or moments
    first = tmp_path / "straight" / "checkpoints" / "ckpt_000001"
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer.pt"} <= {p.name for p in first.iterdir()}
    head = torch.load(first / "trainer.pt", weights_only=True)
    assert "model" not in head and "optimizer" not in head and head["step"] == 1
    # a checkpoint folder is a model file too: the shards' full weights, in this one process
    from clip4vla import from_pretrained

    assert worst(from_pretrained(first).state_dict(), weights(tmp_path / "straight", 1)) == 0.0
    assert not list((tmp_path / "straight" / "checkpoints").glob(".tmp-*"))
    # killed after step 2, whose folder then lost a shard: refused, naming it; resume falls back to
    # step 1 and, at the same world size, trains bitwise the straight run's weights
    resumed = tmp_path / "resumed"
    copy_run(tmp_path / "straight", resumed, 1, 2)
    (resumed / "checkpoints" / "ckpt_000002" / "__1_0.distcp").unlink()
    done = run(tmp_path, "resumed", synthetic_root, 2, "train.strategy=fsdp", resume=True)
    assert "shard __1_0.distcp is missing" in done.stderr and "falling back to the previous checkpoint" in done.stderr
    assert "resumed from" in done.stderr and "ckpt_000001 at step 1" in done.stderr
    assert worst(weights(resumed, STEPS), final) == 0.0
    # FSDP on 2 ranks -> 1 process (FSDP with nothing to shard says so) and -> DDP on 2 ranks; a
    # one-process DDP checkpoint -> FSDP on 2 ranks: the straight run's weights, up to summation order
    run(tmp_path, "single", synthetic_root, 1)
    for name, nproc, strategy, source in (("to_one", 1, "fsdp", "straight"), ("to_two_ddp", 2, "ddp", "straight"),
                                          ("one_to_two", 2, "fsdp", "single")):
        folder = tmp_path / name
        copy_run(tmp_path / source, folder, 1)
        done = run(tmp_path, name, synthetic_root, nproc, f"train.strategy={strategy}", resume=True)
        if nproc == 1:
            assert "train.strategy=fsdp on one process: nothing to shard" in done.stderr
        assert worst(weights(folder, STEPS), final) <= ATOL, name


def test_fsdp_fp16_skips_the_steps_ddp_skips(synthetic_root, tmp_path):
    """fp16 loss scaling over shards: an overflow on any rank's shard skips the step on every rank
    (the flags are combined over ranks), so FSDP skips exactly the steps DDP skips."""
    sharded = run(tmp_path, "fsdp16", synthetic_root, 2, "train.strategy=fsdp", "train.precision=fp16")
    run(tmp_path, "ddp16", synthetic_root, 2, "train.precision=fp16")
    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                   if '"loss"' in line] for name in ("fsdp16", "ddp16")}
    skipped = [[r["fp16_skipped"] for r in rows[name]] for name in ("fsdp16", "ddp16")]
    assert skipped[0] == skipped[1] and skipped[0][-1] >= 1  # the first step's scale overflows fp16
    assert json.loads(sharded.stdout.strip().splitlines()[-1])["fp16_skipped"] == skipped[0][-1]  # the script's JSON
    assert worst(weights(tmp_path / "fsdp16", STEPS), weights(tmp_path / "ddp16", STEPS)) <= 1e-4


def _empty_rank_worker(rank: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.train.distributed import DistInfo
    from clip4vla.train.fsdp import Sharding

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.micro())
    sharding = Sharding.apply(model, DistInfo(rank, rank, 2, torch.device("cpu"), rank == 0), "fp32",
                              list(model.parameters()))
    frames = torch.randn(2, 2, 3, 224, 224)
    mask = torch.ones(2, 2, dtype=torch.bool) if rank == 0 else torch.zeros(2, 2, dtype=torch.bool)
    _, video = model.encode_video(frames, mask)  # rank 1: no frame at all (e.g. a batch of sound files)
    video.sum().backward()
    sharding.sync_replicated_grads()
    block = model.clip.visual.transformer.resblocks[0]
    grad = block.attn.in_proj_weight.grad
    Path(out, f"rank{rank}").write_text(json.dumps({"sharded_grad": grad is not None,
                                                    "conv1_grad": model.clip.visual.conv1.weight.grad is not None}))
    dist.destroy_process_group()


def test_a_rank_without_frames_does_not_stall_the_sharded_towers(tmp_path):
    """A block's backward is a collective under FSDP: a rank whose local batch has no valid frame
    still runs the vision tower (one padded item, weighted zero), so the other rank's step ends."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_empty_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}").read_text()) == {"sharded_grad": True, "conv1_grad": True}


def test_fsdp_fine_tuning_with_a_loss_trained_head_resumes_bitwise(synthetic_root, micro_export, tmp_path):
    """L2L retrieval: the loss trains a head that also sits in the model (one parameter, two
    names); its sharded checkpoint keeps one set of moments and a resume at step 1 trains the
    straight run's weights bitwise."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    settings = {"model.arch": "null", "model.init_from": micro_export, "model.train_clip": True,
                "data.synthetic.root": synthetic_root, "data.synthetic.clips": 24, "data.num_workers": 0,
                "data.max_frames": 2, "audio.max_segments": 2, "train.batch_size": 4, "train.max_steps": 2,
                "train.eval_every_steps": 2, "train.keep_last": 10, "train.precision": "fp32",
                "train.device": "cpu", "train.strategy": "fsdp", "retrieval.fusion": "l2l",
                "retrieval.fusion_layers": 1}

    def finetune(name: str, resume: bool = False) -> None:
        args = [a for k, v in {**settings, "train.output_dir": tmp_path / name}.items() for a in ("--set", f"{k}={v}")]
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(REPO / "scripts" / "finetune_retrieval.py"), *args, *(["--resume"] if resume else [])],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, f"{name} failed:\n{done.stderr[-4000:]}"

    finetune("straight")
    copy_run(tmp_path / "straight", tmp_path / "resumed", 1)
    finetune("resumed", resume=True)
    assert worst(weights(tmp_path / "resumed", 2), weights(tmp_path / "straight", 2)) == 0.0
