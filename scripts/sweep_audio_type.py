#!/usr/bin/env python
"""Zero-shot text -> audio retrieval while the audio type token moves from [VB] to [NB] (paper Fig. 4).

    python scripts/sweep_audio_type.py --model runs/pretrain_synthetic/model
    python scripts/sweep_audio_type.py --model runs/pretrain_howto_audioset/model \\
        --config configs/finetune_audiocaps.yaml --split test

For w = 0, 0.1, ..., 1 the audio encoder gets the single type token (1 - w)·[VB] + w·[NB]; every
caption of the split's clips with audio queries their audio (R@1/5/10, MedR). Prints the table,
writes a PNG plot to --plot, by default into the model's folder (<model dir>/audio_type_sweep.png;
the path is printed), and prints a JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.cli import HelpFormatter, add_model_arguments, positive_int  # noqa: E402  (no torch import)


def steps_arg(text: str) -> int:
    """argparse type for ``--steps``: at least the two endpoints [VB] and [NB]."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 2 (the [VB] and [NB] endpoints), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (a function, so the tests can check every flag's help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "a model file (its audio and text towers are used)",
                        REPO / "configs" / "finetune_synthetic.yaml", "a retrieval config: its data section locates the corpus",
                        device=False)
    parser.add_argument("--steps", type=steps_arg, default=11,
                        help="number of mixing ratios w from 0 to 1, evenly spaced")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="clips and captions encoded at once")
    parser.add_argument("--plot", type=Path, default=None,
                        help="where to write the PNG plot (default: <model dir>/audio_type_sweep.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.cli import evaluation_split, load_config_and_model, require_writable_file, results_folder
    from clip4vla.config import RetrievalConfig
    from clip4vla.evaluation.audio_type_sweep import plot_sweep, sweep_audio_type

    config, model = load_config_and_model(RetrievalConfig, args.config, args.overrides, args.model)
    plot = require_writable_file(args.plot or results_folder(args.model) / "audio_type_sweep.png", "--plot")
    split, dataset = evaluation_split(config, model, args.split, "retrieval")
    ratios = [round(i / (args.steps - 1), 4) for i in range(args.steps)]
    rows = sweep_audio_type(model, dataset, ratios, batch_size=args.batch_size)
    print(f"zero-shot text->audio on the {split} split ({rows[0]['n_clips']} clips with audio, "
          f"{rows[0]['n_texts']} captions):")
    print(f"  {'w':>5}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MedR':>8}")
    for row in rows:
        print(f"  {row['w']:>5.1f}{row['R1']:8.1f}{row['R5']:8.1f}{row['R10']:8.1f}{row['MedR']:8.1f}")
    plot_sweep(rows, plot, title=f"{split} split, {args.model.name}")
    print(f"plot written to {plot}", file=sys.stderr)
    print(json.dumps({"split": split, "sweep": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
