#!/usr/bin/env python
r"""Pre-train CLIP4VLA.

    python scripts/pretrain.py                       # built-in synthetic data, tiny model, CPU
    torchrun --nproc_per_node=8 scripts/pretrain.py --config configs/pretrain_howto_audioset.yaml \
        --set model.init_from=/path/to/ViT-B-32.pt
    python scripts/pretrain.py --resume              # continue the run in train.output_dir
    python scripts/pretrain.py --print-config        # every config key --set can change, with its value

On first use the default config generates its data: 1200 synthetic clips (~75 MB) in
data/synthetic (reused by later runs and by the fine-tuning, evaluation, search and probe
examples). Writes the model folder <train.output_dir>/model/ with its card (load it with
clip4vla.from_pretrained). The last line printed on stdout is one JSON object with the zero-shot
test metrics and chance; --resume on a finished run trains nothing and prints the same table and
JSON again.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.config import PretrainConfig  # noqa: E402
from clip4vla.train.cli import run_training  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from clip4vla.train.pretrain import PretrainTask

    return run_training(__doc__, PretrainConfig, PretrainTask, REPO / "configs" / "pretrain_synthetic.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
