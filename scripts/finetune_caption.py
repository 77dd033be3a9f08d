#!/usr/bin/env python
r"""Fine-tune CLIP4VLA's Multimodal Caption Generator (video + audio -> caption).

    python scripts/finetune_caption.py                    # synthetic data, from the quick start's model
    torchrun --nproc_per_node=8 scripts/finetune_caption.py --config configs/caption_msrvtt.yaml \
        --set model.init_from=runs/pretrain_howto_audioset/model
    python scripts/finetune_caption.py --resume            # continue the run in train.output_dir
    python scripts/finetune_caption.py --print-config      # every config key --set can change, with its value

Checkpoints are chosen by validation CIDEr; <train.output_dir>/model/ holds the best one with
its caption generator, captions_test.json every generated test caption. The last line printed on
stdout is one JSON object with BLEU-4, METEOR, ROUGE-L and CIDEr (x100).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.config import CaptionConfig  # noqa: E402
from clip4vla.train.cli import run_training  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from clip4vla.train.caption import CaptionTask

    return run_training(__doc__, CaptionConfig, CaptionTask, REPO / "configs" / "caption_synthetic.yaml", argv)


if __name__ == "__main__":
    sys.exit(main())
