#!/usr/bin/env python
"""Linear probes and zero-shot classification on frozen CLIP4VLA features (the paper's Table 6).

    python scripts/linear_probe.py                      # the quick start's model, synthetic ESC-50 + UCF101
    python scripts/linear_probe.py --model runs/pretrain_howto_audioset/model --config configs/probe_esc50.yaml
    python scripts/linear_probe.py --model MODEL --config configs/probe_ucf101.yaml --set probe.mode=zero_shot

ESC-50: 5-fold accuracy of a LayerNorm + Linear probe on the audio encoder's features (type [NB]);
UCF101: accuracy over the official splits from vision + audio features. The probe's L2 strength
is chosen on a slice of the training folds, never on the test fold. Zero-shot: the closest class
prompt. Features are extracted once per model into <train.output_dir>/features (resumable) and
reused by later runs. Prints one table per benchmark, writes <train.output_dir>/probe.json and
prints it as one JSON object on the last line.

With data.corpus: synthetic (the default config) the synthetic set at data.synthetic.root (only
read) is laid out as ESC-50 and UCF101 (classes: its sounds and colours) under
<train.output_dir>/twins first, once: ~0.5 GB for the quick start's 1200 clips (ESC-50 keeps 5-s
44.1 kHz wav files). Delete <train.output_dir> to free the space; the next run rebuilds it.
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
    from clip4vla.cli import HelpFormatter, add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "the model file to probe (the quick start's by default)",
                        REPO / "configs" / "probe_synthetic.yaml",
                        "a probe config: its data section locates ESC-50 / UCF101, its probe section the penalties, "
                        "mode and prompts (features are extracted on --device; the probes are fitted on the CPU "
                        "in float64)", model_default=Path("runs") / "pretrain_synthetic" / "model", split=False)
    parser.add_argument("--no-progress", action="store_true", help="hide the feature-extraction progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    from clip4vla.config import Esc50Data, ProbeConfig, Ucf101Data
    from clip4vla.evaluation.linear_probe import format_table, run_esc50, run_manifest, run_ucf101, summarise
    from clip4vla.files import write_text_atomic
    from clip4vla.cli import load_config_and_model, resolve_device

    config, model = load_config_and_model(ProbeConfig, args.config, args.overrides, args.model)
    device = resolve_device(args.device)
    model.to(device).eval()
    out_dir = Path(config.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dc, benchmarks = config.data, {}
    if dc.corpus == "synthetic":
        from clip4vla.data.synthetic_formats import write_corpus_format

        source = Path(dc.synthetic.root)
        for fmt in ("esc50", "ucf101"):
            if not (out_dir / "twins" / fmt / ".complete").exists():
                write_corpus_format(source, fmt, out_dir / "twins" / fmt)
                (out_dir / "twins" / fmt / ".complete").touch()
        benchmarks["esc50"] = Esc50Data(root=str(out_dir / "twins" / "esc50"))
        benchmarks["ucf101"] = Ucf101Data(list_dir=str(out_dir / "twins" / "ucf101" / "ucfTrainTestlist"),
                                          video_dir=str(out_dir / "twins" / "ucf101" / "UCF-101"))
    elif dc.corpus == "manifest":  # your own labelled media: the data section is what the runner reads
        benchmarks["manifest"] = dc
    elif dc.corpus in ("esc50", "ucf101"):
        section = getattr(dc, dc.corpus)
        if section is None:
            print(f"error: data.corpus is {dc.corpus} but the config has no data.{dc.corpus} section", file=sys.stderr)
            return 2
        benchmarks[dc.corpus] = section
    else:
        print(f"error: data.corpus must be esc50, ucf101, manifest or synthetic for probes, got {dc.corpus}",
              file=sys.stderr)
        return 2

    runners = {"esc50": ("ESC-50", run_esc50), "ucf101": ("UCF101", run_ucf101), "manifest": ("manifest", run_manifest)}
    report = {"model": str(args.model), "mode": config.probe.mode}
    for corpus, section in benchmarks.items():
        name, runner = runners[corpus]
        try:
            result = runner(model, args.model, section, config.probe, out_dir / "features", progress=not args.no_progress)
        except (FileNotFoundError, ValueError) as err:  # an AnnotationError is a ValueError
            print(f"error: {name}: {err}", file=sys.stderr)
            return 2
        if len(result["skipped"]):
            logging.warning("%s: %d unreadable clips left out (listed in %s/skipped.jsonl)", name,
                            len(result["skipped"]), out_dir / "features" / corpus)
        num_classes = result["classes"]
        print(format_table(name, result, 100.0 / num_classes))
        report[corpus] = {"rows": summarise(result), "skipped": len(result["skipped"]), "classes": num_classes,
                          "detail": result}
    write_text_atomic(out_dir / "probe.json", json.dumps(report, indent=1, default=str))
    print(json.dumps({k: ({"rows": v["rows"], "classes": v["classes"], "skipped": v["skipped"]} if isinstance(v, dict)
                          else v) for k, v in report.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
