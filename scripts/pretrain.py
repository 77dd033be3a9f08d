#!/usr/bin/env python
"""Pre-train CLIP4VLA.

    python scripts/pretrain.py                       # built-in synthetic data, tiny model, CPU
    torchrun --nproc_per_node=8 scripts/pretrain.py --config configs/pretrain_howto_audioset.yaml \
        --set model.clip_checkpoint=/path/to/ViT-B-32.pt
    python scripts/pretrain.py --resume              # continue the run in train.output_dir

The last line printed on stdout is one JSON object with the zero-shot test metrics and chance.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "pretrain_synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=...")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from clip4vla.config import ConfigError, PretrainConfig, load_config
    from clip4vla.train.trainer import Pretrainer

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    try:
        config = load_config(PretrainConfig, args.config or DEFAULT_CONFIG, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    trainer = Pretrainer(config, resume=args.resume)
    result = trainer.fit()
    if trainer.dist.is_main:
        chance = result["chance"]
        print(f"\nzero-shot retrieval on the {result['split']} split ({result['n_clips']} clips with audio and video):")
        print(f"  {'task':<6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MedR':>8}")
        for task, m in result["retrieval"].items():
            print(f"  {task:<6}{m['R1']:8.1f}{m['R5']:8.1f}{m['R10']:8.1f}{m['MedR']:8.1f}")
        print(f"  {'chance':<6}{chance['R1']:8.1f}{chance['R5']:8.1f}{chance['R10']:8.1f}{chance['MedR']:8.1f}")
        summary = {"split": result["split"], "n_clips": result["n_clips"], **result["retrieval"], "chance": chance}
        print(json.dumps(summary), flush=True)
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
