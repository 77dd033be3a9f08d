#!/usr/bin/env python
"""Caption every video of a split with a fine-tuned model; BLEU-4, METEOR, ROUGE-L, CIDEr.

    python scripts/evaluate_caption.py --model runs/caption_synthetic/model
    python scripts/evaluate_caption.py --model runs/caption_msrvtt/model --config configs/caption_msrvtt.yaml --beam 5

The model file decides the preprocessing and holds the caption generator; the config says where
the data is (its data section) and how to decode (its caption section; --beam, --length-penalty
and --modality override it under the config's rules). Scores one caption per video against all
of its references (pycocoevalcap with its PTB tokenizer; without a working Java, a labelled
whitespace tokenisation and no METEOR). Writes every caption to --out before scoring, then the
metrics too, by default into the model's folder (<model dir>/captions_<split>.json: for the test
split this replaces the captions the fine-tune wrote there; the path is printed); prints a table
with three video-blind baselines and, as the last stdout line, the same JSON object as
scripts/finetune_caption.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.cli import HelpFormatter, add_model_arguments, positive_int  # noqa: E402  (no torch import)

# flag -> the config key it sets (the key's rules check the flag)
FLAG_KEYS = {"beam": "caption.beam", "length_penalty": "caption.length_penalty", "modality": "caption.modality"}


def config_value(key: str) -> Callable[[str], str]:
    """argparse type: ``text`` as the config would take it for ``key`` (the config's own rules)."""
    def check(text: str) -> str:
        from clip4vla.config import CaptionConfig, ConfigError, load_config

        try:
            load_config(CaptionConfig, None, [f"{key}={text}"])
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    return check


def build_parser() -> argparse.ArgumentParser:
    """The command line (a function, so the tests can check every flag's help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "a model file with a caption generator", REPO / "configs" / "caption_synthetic.yaml",
                        "a captioning config: its data section locates the corpus, its caption section decodes")
    parser.add_argument("--beam", type=config_value("caption.beam"), default=None, metavar="N",
                        help="beam width, 1 = greedy (sets caption.beam; default: the config's)")
    parser.add_argument("--length-penalty", type=config_value("caption.length_penalty"), default=None, metavar="P",
                        help="finished captions are ranked by log-probability / length ** P, P >= 0 "
                             "(sets caption.length_penalty; default: the config's)")
    parser.add_argument("--modality", type=config_value("caption.modality"), default=None, choices=("v", "a", "av"),
                        help="what the generator sees: vision, audio or both "
                             "(sets caption.modality; default: the config's)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="videos decoded at once")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the captions and metrics (default: <model dir>/captions_<split>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.cli import (evaluation_split, exit_with_error, load_config_and_model, require_writable_file,
                              resolve_device, results_folder)
    from clip4vla.config import CaptionConfig
    from clip4vla.data.corpora import read_split
    from clip4vla.evaluation.caption_inference import (caption_references, caption_summary, caption_videos,
                                                       format_caption_table, score_captions)
    from clip4vla.evaluation.captioning import java_problem

    overrides = args.overrides + [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items()
                                  if getattr(args, flag) is not None]
    config, model = load_config_and_model(CaptionConfig, args.config, overrides, args.model)
    if "caption" not in model.heads:
        exit_with_error(f"{args.model} has no caption generator: fine-tune one with scripts/finetune_caption.py")
    split = args.split or config.data.test_split
    if split is None:
        exit_with_error("the config has no data.test_split: pass --split")
    out = require_writable_file(args.out or results_folder(args.model) / f"captions_{split}.json", "--out")
    java_problem()  # a broken Java is reported now (and scored without), not after decoding
    cc = config.caption
    device = resolve_device(args.device)
    model.to(device).eval()
    split, dataset = evaluation_split(config, model, split, "caption")
    audio_type = model.preprocessing.audio_type if model.preprocessing.audio_type is not None else "clip"
    predictions, unreadable = caption_videos(model, dataset, cc.modality, audio_type, cc.beam, cc.length_penalty,
                                             device, "fp32" if device.type == "cpu" else "bf16", args.batch_size)
    if not predictions:
        exit_with_error(f"no video of the {split} split could be read ({unreadable} unreadable): nothing to score")
    train = read_split(config.data, config.data.eval_corpus or config.data.corpus, "train", "caption")
    result = score_captions(split, cc.beam, cc.modality, predictions, caption_references(dataset, predictions),
                            unreadable, [c for r in train for c in r.captions], out, model=str(args.model))
    print(format_caption_table(result))
    print(f"captions and metrics written to {out}", file=sys.stderr)
    print(json.dumps(caption_summary(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
