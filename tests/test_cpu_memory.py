"""``clip4vla.train.cpu_memory``: a CPU training step reuses the memory the previous one freed.

Measured as the kernel sees it: page faults of steps that allocate, write and free 64 MB tensors
(an activation's size), in a fresh process each way.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import torch
from clip4vla.train.cpu_memory import keep_freed_memory
applied = keep_freed_memory(large_blocks=True) if sys.argv[1] == "keep" else False

def step():  # a step's activations: 64 MB tensors, written, all freed at the end
    activations = [torch.ones(16 * 2**20) for _ in range(5)]
    del activations

for _ in range(2):  # the first steps grow the heap
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activation_memory_is_reused_instead_of_faulted_in_again():
    default, kept = probe("default"), probe("keep")
    assert kept["applied"] is True
    pages = 3 * 5 * 64 * 2**20 // 4096  # what 3 steps of fresh 64 MB blocks fault in (4 KB pages)
    assert default["faults"] > pages * 0.9, default  # glibc's default: mmap'd afresh in every step
    assert kept["faults"] < default["faults"] / 3, kept  # kept: mostly the same pages, already mapped


def test_a_launcher_s_allocator_environment_is_left_alone(monkeypatch):
    import clip4vla.train.cpu_memory as cpu_memory

    monkeypatch.setattr(cpu_memory, "_mode", None)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert cpu_memory.keep_freed_memory(large_blocks=False) is False  # would have put mmap back on
    assert cpu_memory._mode is None
