#!/usr/bin/env python
"""Pair every video without audio with the audio of its most similar training video (the paper).

    python scripts/pair_missing_audio.py --model runs/pretrain_synthetic/model
    python scripts/pair_missing_audio.py --model runs/pretrain_howto_audioset/model \\
        --config configs/finetune_msrvtt.yaml --out data/msrvtt/audio_pairs.json

For each clip of the corpus (every split) that has no audio track, the training clip with audio
whose global vision feature (frozen encoder of --model) is nearest by cosine lends its audio. The
pairing is written once (atomically) to --out; point ``data.audio_pairs`` at it for fine-tuning
and evaluation. Without it a silent clip is scored with vision alone, never with a random clip's
audio.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.cli import HelpFormatter, add_model_arguments, positive_int  # noqa: E402  (no torch import)


def build_parser() -> argparse.ArgumentParser:
    """The command line (a function, so the tests can check every flag's help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "a pre-trained model file (its vision tower is used)",
                        REPO / "configs" / "finetune_synthetic.yaml", "a retrieval config: its data section locates the corpus",
                        split=False, device=False)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the pairing JSON (default: audio_pairs.json beside --model)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="videos encoded at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.cli import load_config_and_model, require_writable_file, results_folder
    from clip4vla.config import RetrievalConfig
    from clip4vla.data.audio_pairs import write_audio_pairs
    from clip4vla.data.pairing import nearest_audio_donors

    config, model = load_config_and_model(RetrievalConfig, args.config, args.overrides, args.model)
    out = require_writable_file(args.out or results_folder(args.model) / "audio_pairs.json", "--out")
    pairs, stats = nearest_audio_donors(model, config.data, batch_size=args.batch_size)
    write_audio_pairs(out, pairs, corpus=config.data.corpus, model=str(args.model))
    print(f"{stats['silent']} of {stats['clips']} clips have no audio; paired with {stats['donors']} training clips "
          f"with audio (mean cosine {stats['mean_cosine']:.3f}) -> {out}")
    print(f"fine-tune or evaluate with --set data.audio_pairs={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
