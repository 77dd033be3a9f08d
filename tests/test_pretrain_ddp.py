"""Two-process DDP smoke test of the real pre-training script (CPU, gloo), against one process.

The same micro config is trained for one epoch by ``torch.distributed.run --nproc_per_node=2`` and
by a single process, with the same global batch (4 = 2 ranks x 2). The sampler keeps each global
batch identical across world sizes and the losses gather features with gradients, so the two
runs must produce the same weights after every optimiser step (up to float32 summation order).

Both runs go through a small launcher that executes ``scripts/pretrain.py`` unchanged (``runpy``)
after wrapping ``CheckpointManager.save`` and the run folder's write of ``metrics.jsonl`` to append
"<rank> <what>" to a ledger file: that is how the test sees *which* ranks wrote outputs, which
the files themselves cannot show (a second writer would just overwrite them).

Not marked slow on purpose: the multi-process path must run in CI (about 30 s on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import micro_pretrain_settings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pretrain.py"
GLOBAL_BATCH = 4
ATOL = 1e-5

LAUNCHER = """
import os, runpy, sys
from clip4vla.train import checkpoint, run_folder

LEDGER = os.environ["CLIP4VLA_TEST_LEDGER"]
RANK = os.environ.get("RANK", "0")


def note(what):
    with open(LEDGER, "a") as fh:
        fh.write(f"{RANK} {what}\\n")


save = checkpoint.CheckpointManager.save
write_text = run_folder.write_text_atomic


def recording_save(self, step, state):
    note(f"checkpoint {step}")
    return save(self, step, state)


def recording_write_text(path, text):
    if str(path).endswith("metrics.jsonl"):
        note("metrics")
    return write_text(path, text)


checkpoint.CheckpointManager.save = recording_save
run_folder.write_text_atomic = recording_write_text
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def overrides(root: Path, out: Path) -> list[str]:
    settings = micro_pretrain_settings(root, out)
    settings.update({
        # Adam moves every parameter by ~lr on its first step whatever the gradient's size, so
        # fp32 summation-order noise in near-zero gradients (2 ranks vs 1) can show up as weight
        # differences of a few percent of lr: 1e-3 gave 1.7e-5. The gradient equivalence itself
        # is checked to 1e-14 (float64) in test_distributed.py.
        "optim.lr": 2e-4,
        "train.device": "cpu",  # gloo: also on a CI machine that happens to have one GPU
        "train.epochs": 1,
        "train.batch_size": GLOBAL_BATCH,  # global: 2 per rank under torchrun
        "train.keep_last": 100,
    })
    return [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]


def launch(tmp_path: Path, name: str, root: Path, nproc: int) -> tuple[subprocess.CompletedProcess, Path, Path]:
    launcher = tmp_path / "launch_pretrain.py"
    launcher.write_text(LAUNCHER)
    out, ledger = tmp_path / name, tmp_path / f"{name}.ledger"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), CLIP4VLA_TEST_LEDGER=str(ledger))
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*prefix, str(launcher), str(SCRIPT), *overrides(root, out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, f"{name} run failed:\n{result.stderr[-4000:]}"
    return result, out, ledger


def json_lines(stdout: str) -> list[int]:
    found = []
    for i, line in enumerate(stdout.strip().splitlines()):
        try:
            if isinstance(json.loads(line), dict):
                found.append(i)
        except ValueError:
            continue
    return found


def step_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def checkpoint_model(out: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / f"ckpt_{step:06d}.pt", map_location="cpu", weights_only=True)["model"]


def test_two_rank_run_matches_one_process(synthetic_root, tmp_path):
    n_train = json.loads((synthetic_root / "synthetic_meta.json").read_text())["splits"]["train"]
    steps = n_train // GLOBAL_BATCH
    assert steps >= 2  # a second step is where an unsynchronised DDP bucket used to crash

    ddp, ddp_out, ddp_ledger = launch(tmp_path, "ddp", synthetic_root, nproc=2)

    # only rank 0 prints: the results table once, and one JSON object, on the last line
    lines = ddp.stdout.strip().splitlines()
    assert json_lines(ddp.stdout) == [len(lines) - 1], ddp.stdout[-2000:]
    last = json.loads(lines[-1])
    assert {"t2a", "v2a", "t2v", "chance"} <= set(last)
    assert ddp.stdout.count("zero-shot retrieval on the") == 1

    # outputs are written by rank 0 alone, each checkpoint exactly once
    ledger = ddp_ledger.read_text().splitlines()
    assert [line for line in ledger if line.startswith("0 checkpoint")] == [f"0 checkpoint {s}" for s in range(1, steps + 1)]
    assert not [line for line in ledger if not line.startswith("0 ")], ledger
    assert "0 metrics" in ledger
    assert sorted(p.name for p in (ddp_out / "checkpoints").glob("ckpt_*.pt")) == [
        f"ckpt_{s:06d}.pt" for s in range(1, steps + 1)
    ]
    assert (ddp_out / "loss_curves.png").stat().st_size > 1000

    ddp_rows = step_rows(ddp_out)
    assert [r["step"] for r in ddp_rows] == list(range(1, steps + 1))
    assert all(math.isfinite(r[k]) for r in ddp_rows for k in ("loss", "ta", "va", "aa", "grad_norm"))

    # the same global batches in one process: same weights after every optimiser step
    _, one_out, one_ledger = launch(tmp_path, "one", synthetic_root, nproc=1)
    assert one_ledger.read_text().splitlines().count("0 checkpoint 1") == 1
    previous = None
    for step in range(1, steps + 1):
        a, b = checkpoint_model(one_out, step), checkpoint_model(ddp_out, step)
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= ATOL, f"step {step}: 2-rank weights differ from 1-process weights by {worst:.3g}"
        if previous is not None:  # in norm the weights move 10x more per step than the runs differ
            moved = sum(((a[k] - previous[k]).double() ** 2).sum() for k in a) ** 0.5
            apart = sum(((a[k] - b[k]).double() ** 2).sum() for k in a) ** 0.5
            assert moved > 10 * apart, (moved, apart)
        previous = a

    # the logged losses are the global-batch losses, whatever the world size
    one_rows = step_rows(one_out)
    for r1, r2 in zip(one_rows, ddp_rows, strict=True):
        for key in ("loss", "ta", "va", "aa", "grad_norm"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), (r1["step"], key)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_through_the_c10d_rendezvous_match_one_process(synthetic_root, tmp_path):
    """Two torchrun agents ("nodes", one process each) meet at a c10d rendezvous, as on a cluster
    (README: multi-node), and train the same weights as one process with the same global batch."""
    launcher = tmp_path / "launch_pretrain.py"
    launcher.write_text(LAUNCHER)
    out = tmp_path / "nodes"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), CLIP4VLA_TEST_LEDGER=str(tmp_path / "nodes.ledger"))
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
             f"--rdzv_endpoint={endpoint}", "--rdzv_id=clip4vla-test", "--max_restarts=0", str(launcher), str(SCRIPT),
             *overrides(synthetic_root, out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    results = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-4000:]
    ledger = (tmp_path / "nodes.ledger").read_text().splitlines()
    assert {line.split()[0] for line in ledger} == {"0"}  # one writer across both nodes...
    assert ledger.count("0 checkpoint 1") == 1  # ...of one run (two separate runs would both write)
    _, one_out, _ = launch(tmp_path, "one", synthetic_root, nproc=1)
    steps = len(step_rows(one_out))
    assert [r["step"] for r in step_rows(out)] == list(range(1, steps + 1))
    a, b = checkpoint_model(one_out, steps), checkpoint_model(out, steps)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= ATOL, f"2-node weights differ from 1-process weights by {worst:.3g}"
