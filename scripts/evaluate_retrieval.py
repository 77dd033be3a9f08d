#!/usr/bin/env python
"""Evaluate a model on text <-> video retrieval: R@1/5/10, MedR, MeanR for V, A and AV.

    python scripts/evaluate_retrieval.py --model runs/finetune_synthetic/model.pt
    python scripts/evaluate_retrieval.py --model runs/finetune_msrvtt/model.pt --config configs/finetune_msrvtt.yaml
    python scripts/evaluate_retrieval.py --model runs/pretrain_synthetic/model.pt --fusion g2g   # zero-shot

The model file decides the preprocessing (frames, segments, caption length, type token) and the
fusion head; the config says where the data is (its data section) and the split to score. Every
video and every caption is encoded once; every caption is a query (all captions of a clip are its
ground truth). Prints a table, writes the metrics to --out (default <model dir>/retrieval_<split>.json)
and prints one JSON object as the last line.
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
    parser.add_argument("--model", type=Path, required=True, help="a model file (model.pt, a checkpoint, ...)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "finetune_synthetic.yaml",
                        help="a retrieval config: its data section locates the corpus")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default=None, help="split to score (default: the config's data.test_split)")
    parser.add_argument("--modalities", default="v,a,av", help="comma-separated subset of v,a,av")
    parser.add_argument("--fusion", choices=("g2g",), default=None,
                        help="score a model without a fusion head (a pre-trained one) with global features")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", type=Path, default=None, help="where to write the metrics JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.config import RetrievalConfig
    from clip4vla.evaluation.fusion_retrieval import encode_retrieval_set, evaluate_fusion_retrieval
    from clip4vla.files import write_text_atomic
    from clip4vla.train.cli import evaluation_split, load_config_and_model, resolve_device
    from clip4vla.train.retrieval import attach_fusion_head, format_retrieval_table

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if not modalities or set(modalities) - {"v", "a", "av"}:
        parser.error(f"--modalities must be a subset of v,a,av, got {args.modalities!r}")
    config, model = load_config_and_model(RetrievalConfig, args.config, args.overrides, args.model)
    if "fusion" not in model.heads:
        if args.fusion is None:
            print(f"error: {args.model} has no fusion head (it was not fine-tuned for retrieval); pass --fusion g2g "
                  "to score its global features zero-shot", file=sys.stderr)
            return 2
        attach_fusion_head(model, "g2g", 0)
    device = resolve_device(args.device)
    model.to(device).eval()
    split, dataset = evaluation_split(config, model, args.split, "retrieval")
    audio_type = model.preprocessing.audio_type if model.preprocessing.audio_type is not None else "clip"
    precision = "fp32" if device.type == "cpu" else "bf16"
    encoded = encode_retrieval_set(model, dataset, args.batch_size, device, precision, audio_type)
    result = evaluate_fusion_retrieval(model, encoded, modalities, 1.0, device, precision, args.batch_size)
    result.update(split=split, fusion=model.heads["fusion"].mode, model=str(args.model))
    print(format_retrieval_table(result))
    out = args.out or args.model.parent / f"retrieval_{split}.json"
    write_text_atomic(out, json.dumps(result, indent=1))
    print(json.dumps({"split": split, "fusion": result["fusion"], **result["modalities"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
