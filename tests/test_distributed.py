"""torch.distributed plumbing, and the claim the losses rest on: with local rows scored against gathered
columns (gradients through the gather) and DDP gradient averaging, 2 ranks give the same loss and
gradients as one process on the global batch — also with unequal per-rank batches and with
feature-cached accumulation (2 micro-batches × 2 ranks)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clip4vla.train import distributed as cdist

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _load_worker():
    spec = importlib.util.spec_from_file_location("clip4vla_test_dist_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for var in TORCHRUN_ENV:
        monkeypatch.delenv(var, raising=False)


def test_single_process_needs_no_process_group(no_torchrun_env):
    info = cdist.init_distributed(device="cpu")
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (0, 0, 1, True)
    assert info.device == torch.device("cpu") and not info.distributed
    assert not torch.distributed.is_initialized()
    assert cdist.get_world_size() == 1 and cdist.get_rank() == 0
    t = torch.tensor([1.0, 3.0], requires_grad=True)
    mean = cdist.all_reduce_mean(t)
    assert torch.equal(mean, t.detach()) and mean.data_ptr() != t.data_ptr() and not mean.requires_grad
    assert cdist.broadcast_object({"a": 1}) == {"a": 1}
    model = torch.nn.Linear(2, 2)
    assert cdist.wrap_ddp(model, info) is model
    assert cdist.unwrap_model(model) is model and cdist.no_sync_factory(model) is None
    cdist.barrier()
    cdist.cleanup()


def test_world_size_one_from_env(no_torchrun_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = cdist.init_distributed(device="cpu")
    assert info.world_size == 1 and not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "MASTER_ADDR"),
    ],
)
def test_bad_torchrun_environment_is_a_clear_error(no_torchrun_env, monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(cdist.DistributedSetupError, match=message):
        cdist.init_distributed(device="cpu")
    assert not torch.distributed.is_initialized()


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), "--out", str(out),
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return [torch.load(out / f"results_rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("scenario", sorted(worker.SCENARIOS))
def test_two_ranks_match_single_process_global_batch(torchrun_results, scenario):
    ref_loss, ref_grads = worker.reference(scenario)
    assert "model.audio.0.weight" in ref_grads and "model.text.weight" in ref_grads
    assert not any(k.startswith("model.video") for k in ref_grads)  # frozen tower
    for rank, results in enumerate(torchrun_results):
        got = results[scenario]
        assert got["loss"] == pytest.approx(ref_loss, abs=1e-5), f"rank {rank}"
        assert sorted(got["grads"]) == sorted(ref_grads), f"rank {rank}"
        for name, ref in ref_grads.items():
            torch.testing.assert_close(got["grads"][name], ref, atol=1e-5, rtol=0, msg=f"rank {rank} {name}")


def test_the_comparison_is_sensitive_to_the_gather():
    """Without gathering, each rank would only see its own 4 negatives: the averaged gradient of
    two half-batch losses must differ clearly from the global one, or the test above proves nothing."""
    from clip4vla.losses import PretrainLoss

    _, ref_grads = worker.reference("paper")
    model = worker.build_model()
    loss_fn = PretrainLoss(intra_modal=True)
    batch = worker.global_batch()
    for start in (0, 4):
        loss, _ = loss_fn(**worker.features_and_valid(model, worker.rows(batch, start, start + 4)))
        (loss / 2).backward()
    diff = max((p.grad - ref_grads[f"model.{n}"]).abs().max().item() for n, p in model.named_parameters() if p.grad is not None)
    assert diff > 1e-3


@pytest.mark.parametrize("where", ["barrier", "collective"])
def test_a_stopped_rank_is_named_within_the_timeout(tmp_path, where):
    """Rank 1 stops answering: rank 0 must stop after train.dist_timeout_s naming rank 1."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("dist_timeout_worker.py")), where, "4"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "STOPPED: rank 0" in output and "Ranks 1 failed to pass" in output, output[-3000:]
    assert "train.dist_timeout_s" in output
    assert elapsed < 60  # the 4-s timeout, not the rank's 40-s sleep (or the default 30 minutes)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"clip4vla_test_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_retrieval_loss_on_two_ranks_matches_one_process(tmp_path):
    """G2G, G2L (transformer inside DDP) and L2L (head trained by the loss, outside DDP)."""
    retrieval_worker = _load("dist_retrieval_worker")
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("dist_retrieval_worker.py")), "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for mode in retrieval_worker.MODES:
        ref_loss, ref_grads = retrieval_worker.reference(mode)
        for result in ranks:
            assert abs(result[mode]["loss"] - ref_loss) < 1e-9, (mode, result[mode]["loss"], ref_loss)
            assert result[mode]["grads"].keys() == ref_grads.keys(), mode
            for key, grad in ref_grads.items():
                # float64 throughout except LayerNorm, which computes in float32 by design: ~1e-7 of
                # a gradient's scale
                worst = (result[mode]["grads"][key] - grad).abs().max()
                assert worst <= 1e-6 * grad.abs().max() + 1e-12, (mode, key, float(worst))
        if mode == "l2l":
            assert any(k.startswith("l.head.") for k in ref_grads)
