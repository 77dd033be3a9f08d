#!/usr/bin/env python
r"""Turn any model clip4vla reads into a model folder (safetensors + config.json + model card).

    python scripts/export_model.py runs/finetune_synthetic/model out/my-model --license mit \
        --description "Retrieval on my holiday videos."
    python scripts/export_model.py ViT-B-32.pt out/clip4vla-vit-b-32-init --license mit
    python scripts/export_model.py runs/finetune_synthetic/model out/my-model-onnx --onnx

SOURCE is anything ``clip4vla.from_pretrained`` takes: a model folder, an older ``model.pt``, a
trainer checkpoint (``checkpoints/best.pt``), a released CLIP4VLA checkpoint, an OpenAI or
open_clip CLIP (its audio tower then starts as a copy of the vision tower, the paper's
initialisation: fine-tune it before trusting its sound embeddings), or a Hub id. OUT receives
``model.safetensors``, ``config.json`` and ``README.md``, all at once (a killed export leaves
nothing half-written); ``--onnx`` adds ``text.onnx``, ``video.onnx`` and ``audio.onnx`` and says in
the card how to feed them. Share the folder with the Hub's own client, e.g.
``hf upload <org>/<name> OUT``. What the card cannot know (licence, a description, Hub dataset
ids) comes from the flags; nothing is invented.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from clip4vla.cli import HelpFormatter, exit_with_error  # noqa: E402  (no torch import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("source", help="a model folder, model file, CLIP checkpoint or Hub id (org/name[@revision])")
    parser.add_argument("out", type=Path, help="the model folder to write")
    parser.add_argument("--onnx", action="store_true",
                        help="also export the three encoders to ONNX (needs pip install -e \".[onnx]\")")
    parser.add_argument("--name", default=None, help="the card's title (default: OUT's folder name)")
    parser.add_argument("--license", default=None, help="a Hub licence id (mit, apache-2.0, cc-by-4.0, ...)")
    parser.add_argument("--description", default=None, help="a paragraph of your own for the card")
    parser.add_argument("--tag", dest="tags", action="append", default=[], help="an extra Hub tag (repeatable)")
    parser.add_argument("--dataset", dest="datasets", action="append", default=[],
                        help="a Hub dataset id the model was trained on (repeatable)")
    parser.add_argument("--activation", choices=("quick_gelu", "gelu"), default=None,
                        help="the activation of a source that does not record it (an open_clip .safetensors)")
    parser.add_argument("--open-clip-model", default=None,
                        help="the open_clip model name of such a source, e.g. ViT-B-16 (gives its activation)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is already a model folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.cli import require_writable_file
    from clip4vla.models.checkpoints import declare_activation, export_model, model_card_facts, model_from_file
    from clip4vla.models.checkpoints import read_model_file
    from clip4vla.models.loading import CheckpointError
    from clip4vla.models.model_folder import is_model_folder

    out: Path = args.out
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        if not is_model_folder(out):
            exit_with_error(f"{out} exists and is not an empty folder or a model folder: choose another OUT")
        if not args.overwrite:
            exit_with_error(f"{out} is already a model folder: pass --overwrite to replace it")
    require_writable_file(out / "config.json", "OUT")
    try:
        file = declare_activation(read_model_file(args.source), args.activation, args.open_clip_model)
        model = model_from_file(file, file.source)
    except CheckpointError as err:
        hint = " (here: --activation or --open-clip-model)" if "model.activation" in str(err) else ""
        exit_with_error(f"{err}{hint}")
    model.eval()
    kinds = {"model folder": "a clip4vla model folder", "export": "a clip4vla 0.2 model.pt",
             "trainer checkpoint": "a clip4vla trainer checkpoint", "openai": "an OpenAI CLIP checkpoint",
             "open_clip": "an open_clip CLIP checkpoint", "reference": "a released CLIP4VLA checkpoint"}
    converted = f"`{args.source}` ({kinds.get(file.kind, file.kind)})"
    if file.needs_audio:
        converted += ("; its audio tower is a copy of the vision tower (the paper's initialisation), not trained "
                      "on sound: fine-tune it (scripts/pretrain.py with model.init_from) before using audio embeddings")
    extra, usage = None, None
    if args.onnx:
        try:
            from clip4vla.models.onnx_export import export_onnx, onnx_usage
        except ImportError as err:
            exit_with_error(f"--onnx needs the ONNX exporter's packages: pip install -e \".[onnx]\" ({err})")
        usage = onnx_usage(model)
        extra = functools.partial(export_onnx, model)  # writes the encoders into the folder before it is named

    card = model_card_facts(model, model.preprocessing, args.name or out.resolve().name, license=args.license,
                            description=args.description, tags=args.tags, datasets=args.datasets,
                            converted_from=converted, usage_extra=usage)
    task = file.extra.get("task")
    export_model(model, out, model.preprocessing, card=card, extra=extra, converted_from=str(args.source),
                 source_kind=file.kind, **({"task": task} if task else {}))
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"{args.source} ({kinds.get(file.kind, file.kind)}) -> {out}: {files}")
    print(f"load it with clip4vla.from_pretrained({str(out)!r}); share it with: hf upload <org>/<name> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
