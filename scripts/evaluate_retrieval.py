#!/usr/bin/env python
"""Evaluate a model on text <-> video retrieval: R@1/5/10, MedR, MeanR for V, A and AV.

    python scripts/evaluate_retrieval.py --model runs/finetune_synthetic/model
    python scripts/evaluate_retrieval.py --model runs/finetune_msrvtt/model --config configs/finetune_msrvtt.yaml
    python scripts/evaluate_retrieval.py --model runs/pretrain_synthetic/model --fusion g2g   # zero-shot

The model file decides the preprocessing (frames, segments, caption length, type token) and the
fusion head; the config says where the data is (its data section) and the split to score. Every
video and every caption is encoded once; every caption is a query (all captions of a clip are its
ground truth). Prints a table, writes the metrics to --out, by default into the model's folder
(<model dir>/retrieval_<split>.json, replacing an earlier one; the path is printed), and prints, as
the last stdout line, the same JSON object as scripts/finetune_retrieval.py.
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


def build_parser() -> argparse.ArgumentParser:
    """The command line (a function, so the tests can check every flag's help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "a model (a run's model folder, a Hub id, a checkpoint, ...)",
                        REPO / "configs" / "finetune_synthetic.yaml",
                        "a retrieval config: its data section locates the corpus")
    parser.add_argument("--modalities", default="v,a,av", help="comma-separated subset of v,a,av")
    parser.add_argument("--fusion", choices=("g2g",), default=None,
                        help="score a model without a fusion head (a pre-trained one) with global features")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="videos and captions encoded at once")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the metrics JSON (default: <model dir>/retrieval_<split>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.cli import (evaluation_split, exit_with_error, load_config_and_model, require_writable_file,
                              resolve_device, results_folder)
    from clip4vla.config import RetrievalConfig
    from clip4vla.evaluation.fusion_retrieval import (encode_retrieval_set, evaluate_fusion_retrieval,
                                                      format_retrieval_table, retrieval_summary)
    from clip4vla.files import write_text_atomic
    from clip4vla.models.heads import attach_fusion_head

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if not modalities or set(modalities) - {"v", "a", "av"}:
        parser.error(f"--modalities must be a subset of v,a,av, got {args.modalities!r}")
    config, model = load_config_and_model(RetrievalConfig, args.config, args.overrides, args.model)
    if "fusion" not in model.heads:
        if args.fusion is None:
            exit_with_error(f"{args.model} has no fusion head (it was not fine-tuned for retrieval); pass --fusion g2g "
                            "to score its global features zero-shot")
        attach_fusion_head(model, "g2g", 0)
    split = args.split or config.data.test_split
    if split is None:
        exit_with_error("the config has no data.test_split: pass --split")
    out = require_writable_file(args.out or results_folder(args.model) / f"retrieval_{split}.json", "--out")
    device = resolve_device(args.device)
    model.to(device).eval()
    split, dataset = evaluation_split(config, model, split, "retrieval")
    audio_type = model.preprocessing.audio_type if model.preprocessing.audio_type is not None else "clip"
    precision = "fp32" if device.type == "cpu" else "bf16"
    encoded = encode_retrieval_set(model, dataset, args.batch_size, device, precision, audio_type)
    result = evaluate_fusion_retrieval(model, encoded, modalities, 1.0, device, precision, args.batch_size)
    result.update(split=split, fusion=model.heads["fusion"].mode, model=str(args.model))
    print(format_retrieval_table(result))
    write_text_atomic(out, json.dumps(result, indent=1))
    print(f"metrics written to {out}", file=sys.stderr)
    print(json.dumps(retrieval_summary(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
