"""What the embeddings of a synthetic pre-training run encode, and what video->audio matches on.

For each attribute of the synthetic clips (shape, size, colour, ...) a nearest-centroid probe:
centroids of the training split's unit-norm features per class, accuracy on the test split. Then
how often the video->audio top-1 shares the query's attributes. This is how we found that the
tiny from-scratch ViT reads colour and size but not shape (benchmarks/RESULTS.md, main job).

    PYTHONPATH=. python benchmarks/probe_synthetic_run.py runs/pretrain_synthetic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from clip4vla import load_model
from clip4vla.config import PretrainConfig, load_config
from clip4vla.data.corpora import read_split
from clip4vla.data.dataset import SampleOptions, TriModalDataset
from clip4vla.evaluation.zero_shot import encode_dataset

ATTRIBUTES = ("shape", "size", "colour", "direction", "sound", "noise")
MODALITIES = ("video", "audio", "text")


def usable_features(model: torch.nn.Module, dataset) -> tuple[dict[str, torch.Tensor], list[str]]:
    feats = encode_dataset(model, dataset, batch_size=64, device=torch.device("cpu"))
    usable = feats["usable"]
    ids = [r.video_id for r, ok in zip(dataset.records, usable.tolist()) if ok]
    return {m: feats[m][usable] for m in MODALITIES}, ids


def probe_accuracy(train: torch.Tensor, train_labels: list[str], test: torch.Tensor, test_labels: list[str]) -> float:
    classes = sorted(set(train_labels))
    centroids = torch.stack([train[[i for i, y in enumerate(train_labels) if y == c]].mean(0) for c in classes])
    predicted = (test @ centroids.T).argmax(1).tolist()
    return float(np.mean([classes[p] == y for p, y in zip(predicted, test_labels)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="output_dir of a synthetic pre-training run")
    args = parser.parse_args()
    config = load_config(PretrainConfig, args.run_dir / "config.yaml")
    if config.data.corpus != "synthetic":
        raise SystemExit(f"{args.run_dir} is not a synthetic run (data.corpus={config.data.corpus})")
    model = load_model(args.run_dir / "model")  # with the preprocessing the run trained with
    options = SampleOptions.for_inference(model.preprocessing)
    datasets = {split: TriModalDataset(read_split(config.data, "synthetic", split, "pretrain"), options)
                for split in ("train", "test")}
    ann = json.loads((Path(config.data.synthetic.root) / "MSRVTT_data.json").read_text())
    attrs = {v["video_id"]: v["attributes"] for v in ann["videos"]}

    train, train_ids = usable_features(model, datasets["train"])
    test, test_ids = usable_features(model, datasets["test"])
    print(f"nearest-centroid probes, train -> test ({len(train_ids)} / {len(test_ids)} clips):")
    print(f"  {'attribute':<10}" + "".join(f"{m:>8}" for m in MODALITIES) + "   chance")
    for key in ATTRIBUTES:
        ytr = [attrs[i][key] for i in train_ids]
        yte = [attrs[i][key] for i in test_ids]
        row = "".join(f"{probe_accuracy(train[m], ytr, test[m], yte):8.2f}" for m in MODALITIES)
        print(f"  {key:<10}{row}   {1 / len(set(ytr)):.2f}")
    top = (test["video"] @ test["audio"].T).argmax(1).tolist()
    shared = {key: np.mean([attrs[test_ids[q]][key] == attrs[test_ids[t]][key] for q, t in enumerate(top)])
              for key in ATTRIBUTES[:4]}
    print("video->audio top-1 shares the query's " + ", ".join(f"{k} {v:.2f}" for k, v in shared.items()))
    hits = np.mean([q == t for q, t in enumerate(top)])
    print(f"video->audio R@1 {100 * hits:.1f} % (chance {100 / len(test_ids):.2f} %)")


if __name__ == "__main__":
    main()
