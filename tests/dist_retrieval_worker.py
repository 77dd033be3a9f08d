"""Worker for the 2-rank retrieval test: per fusion mode, the retrieval loss of a tiny model under
DDP on this rank's half of a fixed global batch; the test compares with one process on all of it.

The "towers" are small linear maps from fixed random inputs to per-token, per-frame and
per-segment features; the fusion head is a micro CLIP's. For L2L the head is trained by the loss,
outside DDP (the loop's path: DDP ignores it, its gradients are all-reduced separately).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
from torch import nn

MODES = ("g2g", "g2l", "l2l")
B, S, F_, L, D_IN = 6, 6, 3, 2, 5


class Towers(nn.Module):
    def __init__(self, head: nn.Module, mode: str) -> None:
        super().__init__()
        self.text = nn.Linear(D_IN, 64)
        self.video = nn.Linear(D_IN, 64)
        self.audio = nn.Linear(D_IN, 64)
        self.head = head
        self.mode = mode

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = self.text(batch["tokens"])
        text = self.head.text_side(batch["ids"], tokens, tokens[:, -1])
        video = self.head.video_side(self.video(batch["frames"]), batch["frame_mask"], self.audio(batch["segments"]),
                                     batch["segment_mask"], "av")
        return {**{f"text.{k}": v for k, v in text.items()}, **{f"video.{k}": v for k, v in video.items()}}


def build(mode: str):
    from clip4vla.losses import RetrievalLoss
    from clip4vla.models.clip import CLIP, CLIPConfig
    from clip4vla.models.fusion import FusionHead

    torch.manual_seed(0)
    head = FusionHead.from_clip(CLIP(CLIPConfig.micro()), mode, layers=1).double()
    towers = Towers(head, mode).double()
    loss = RetrievalLoss(head, train_head=mode == "l2l").double()
    return towers, loss


def global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (B, S), generator=g)
    ids[:, -2:] = 0  # padding
    ids[2, 2:] = 0
    segment_mask = torch.ones(B, L, dtype=torch.bool)
    segment_mask[4] = False  # a silent clip
    return {
        "ids": ids,
        "tokens": torch.randn(B, S, D_IN, generator=g, dtype=torch.float64),
        "frames": torch.randn(B, F_, D_IN, generator=g, dtype=torch.float64),
        "frame_mask": torch.ones(B, F_, dtype=torch.bool),
        "segments": torch.randn(B, L, D_IN, generator=g, dtype=torch.float64),
        "segment_mask": segment_mask,
        "valid": torch.tensor([True, True, True, True, True, False]),
        "index": torch.tensor([0, 0, 1, 2, 3, 4]),  # rows 0 and 1: two captions of one video
    }


def split(features: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in features.items() if k.startswith(prefix)}


def grads(towers: nn.Module, loss: nn.Module) -> dict[str, torch.Tensor]:
    out = {f"t.{n}": p.grad.detach().clone() for n, p in towers.named_parameters() if p.grad is not None}
    out.update({f"l.{n}": p.grad.detach().clone() for n, p in loss.named_parameters() if p.grad is not None})
    return out


def reference(mode: str) -> tuple[float, dict[str, torch.Tensor]]:
    towers, loss_fn = build(mode)
    batch = global_batch()
    feats = towers(batch)
    loss, _ = loss_fn(split(feats, "text."), split(feats, "video."), batch["valid"], batch["index"])
    loss.backward()
    return float(loss.detach()), grads(towers, loss_fn)


def run(out: Path) -> None:
    from clip4vla.train.distributed import all_reduce_grads_mean, all_reduce_mean, cleanup, init_distributed, wrap_ddp

    torch.set_num_threads(1)
    info = init_distributed(device="cpu")
    results = {}
    for mode in MODES:
        towers, loss_fn = build(mode)
        in_loss = {id(p) for p in loss_fn.parameters()}
        ignore = [n for n, p in towers.named_parameters() if id(p) in in_loss]
        model = wrap_ddp(towers, info, ignore=ignore)
        half = B // 2
        local = {k: v[info.rank * half:(info.rank + 1) * half] for k, v in global_batch().items()}
        feats = model(local)
        loss, _ = loss_fn(split(feats, "text."), split(feats, "video."), local["valid"], local["index"])
        loss.backward()
        all_reduce_grads_mean(loss_fn.parameters())
        results[mode] = {"loss": float(all_reduce_mean(loss.detach())), "grads": grads(towers, loss_fn)}
        del model
        gc.collect()
    torch.save(results, out / f"rank{info.rank}.pt")
    cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    sys.exit(run(parser.parse_args().out))
