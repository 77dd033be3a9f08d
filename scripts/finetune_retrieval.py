#!/usr/bin/env python
r"""Fine-tune CLIP4VLA for text -> video retrieval (G2G / G2L / L2L fusion of vision and audio).

    python scripts/finetune_retrieval.py                  # synthetic data, from the quick start's model
    torchrun --nproc_per_node=8 scripts/finetune_retrieval.py --config configs/finetune_msrvtt.yaml \
        --set model.init_from=runs/pretrain_howto_audioset/model
    python scripts/finetune_retrieval.py --resume          # continue the run in train.output_dir
    python scripts/finetune_retrieval.py --print-config    # every config key --set can change, with its value

Checkpoints are chosen on the validation split; <train.output_dir>/model/ holds the best one
with its fusion head. The test table covers vision (V), audio (A) and both (AV); the last line
printed on stdout is one JSON object with those metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.config import RetrievalConfig  # noqa: E402
from clip4vla.train.cli import run_training  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from clip4vla.train.retrieval import RetrievalTask

    return run_training(__doc__, RetrievalConfig, RetrievalTask, REPO / "configs" / "finetune_synthetic.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
