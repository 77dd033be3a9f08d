"""``train.compile: true``: the towers' transformer blocks compiled with ``torch.compile`` (inductor).

Regional compilation: each block is compiled, not the whole model. The blocks of a tower are
identical, so one compiled graph serves them all (per input shape: text, frames and audio segments
have three) and compiling takes seconds per graph instead of minutes for a model-wide graph; it
composes with FSDP, whose units are the same blocks (``clip4vla.train.fsdp``), and with activation
checkpointing. The towers' own code has no graph break (``torch._dynamo.explain`` over each tower's
encode function finds none: ``tests/test_compile.py``), so nothing falls back to eager inside them.

Inductor needs a C++ compiler for CPU kernels and Triton for GPU kernels; a missing one is an
error at start-up, not at the first step after the data was read.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

from clip4vla.config import ConfigError
from clip4vla.models.clip4vla import CLIP4VLA

__all__ = ["check_compiler", "compile_tower_blocks"]

log = logging.getLogger(__name__)


def check_compiler(device: torch.device) -> None:
    """Refuse ``train.compile`` where torch.compile cannot produce kernels for ``device``."""
    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError("train.compile=true: torch.compile does not support this Python; set train.compile=false")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError("train.compile=true needs Triton for GPU kernels (pip install triton); "
                              "or set train.compile=false")
        return
    compilers = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(name) for name in compilers):
        raise ConfigError(f"train.compile=true needs a C++ compiler for CPU kernels ({' / '.join(compilers)} not "
                          "found; e.g. apt-get install g++), or set train.compile=false")


def compile_tower_blocks(model: CLIP4VLA) -> int:
    """Compile every tower block in place (after FSDP sharded them); returns how many."""
    blocks = model.tower_blocks()
    for block in blocks:
        block.compile()
    log.info("train.compile: %d tower blocks compiled with torch.compile (the first steps include compiling)",
             len(blocks))
    return len(blocks)
