#!/usr/bin/env python
"""Caption every video of a split with a fine-tuned model; BLEU-4, METEOR, ROUGE-L, CIDEr.

    python scripts/evaluate_caption.py --model runs/caption_synthetic/model.pt
    python scripts/evaluate_caption.py --model runs/caption_msrvtt/model.pt --config configs/caption_msrvtt.yaml --beam 5

The model file decides the preprocessing and holds the caption generator; the config says where
the data is (its data section). Scores one caption per video against all of its references
(pycocoevalcap with its PTB tokenizer; without Java, a labelled whitespace tokenisation and no
METEOR). Prints a table with three video-blind baselines, writes every caption to --out (default
<model dir>/captions_<split>.json) and prints the metrics as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model file with a caption generator")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "caption_synthetic.yaml",
                        help="a captioning config: its data section locates the corpus")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default=None, help="default: the config's data.test_split")
    parser.add_argument("--beam", type=int, default=None, help="beam width (1 = greedy; default: the config's)")
    parser.add_argument("--length-penalty", type=float, default=None)
    parser.add_argument("--modality", choices=("v", "a", "av"), default=None, help="default: the config's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.config import CaptionConfig
    from clip4vla.data.corpora import read_split
    from clip4vla.evaluation.captioning import caption_metrics
    from clip4vla.files import write_text_atomic
    from clip4vla.train.caption import caption_baselines, caption_videos, format_caption_table
    from clip4vla.train.cli import evaluation_split, load_config_and_model, resolve_device

    config, model = load_config_and_model(CaptionConfig, args.config, args.overrides, args.model)
    if "caption" not in model.heads:
        print(f"error: {args.model} has no caption generator: fine-tune one with scripts/finetune_caption.py",
              file=sys.stderr)
        return 2
    cc = config.caption
    beam = args.beam or cc.beam
    if beam < 1:
        parser.error("--beam must be at least 1")
    device = resolve_device(args.device)
    model.to(device).eval()
    split, dataset = evaluation_split(config, model, args.split, "caption")
    audio_type = model.preprocessing.audio_type if model.preprocessing.audio_type is not None else "clip"
    modality = args.modality or cc.modality
    penalty = cc.length_penalty if args.length_penalty is None else args.length_penalty
    predictions, unreadable = caption_videos(model, dataset, modality, audio_type, beam, penalty, device,
                                             "fp32" if device.type == "cpu" else "bf16", args.batch_size)
    references = {r.video_id: list(r.captions) for r in dataset.records if r.video_id in predictions}
    train = read_split(config.data, config.data.eval_corpus or config.data.corpus, "train", "caption")
    result = {"split": split, "beam": beam, "modality": modality, "metrics": caption_metrics(predictions, references),
              "baselines": caption_baselines(predictions, references, [c for r in train for c in r.captions]),
              "n_unreadable": unreadable, "predictions": predictions, "model": str(args.model)}
    print(format_caption_table(result))
    out = args.out or args.model.parent / f"captions_{split}.json"
    write_text_atomic(out, json.dumps({**result, "references": references}, indent=1))
    print(f"captions: {out}", file=sys.stderr)
    print(json.dumps({"split": split, **result["metrics"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
