"""Worker for tests/test_distributed.py, launched by torchrun with 2 CPU processes (gloo).

It trains nothing: for each scenario it computes the pre-training loss of a tiny seeded
tri-encoder under DDP on this rank's share of a fixed global batch, backpropagates, and saves the
mean loss over ranks and the DDP-averaged gradients. The test compares them with a
single-process run on the whole global batch (``reference`` below, imported by the test).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
from torch import nn

# float64 so that the comparison at atol 1e-5 checks the algebra, not fp32 rounding of losses
# and gradients of size ~100 (the scale is 100)
DTYPE = torch.float64
GLOBAL_BATCH = 8
D_IN = 6
D_FEAT = 4

# name -> (PretrainLoss kwargs, rows of each rank, accumulation micro-batches per rank,
#          global rows marked invalid: the reference simply leaves them out)
SCENARIOS: dict[str, tuple[dict, tuple[int, int], int, tuple[int, ...]]] = {
    "paper": ({"intra_modal": True}, (4, 4), 1, ()),
    "ref_extras_learnable": ({"intra_modal": True, "ref_extras": True, "learnable_scale": True}, (4, 4), 1, ()),
    "unequal_split": ({"intra_modal": True}, (3, 5), 1, ()),
    "grad_cache_accum2": ({"intra_modal": True}, (4, 4), 2, ()),
    "invalid_rows": ({"intra_modal": True}, (4, 4), 1, (1, 6)),
    "invalid_rows_grad_cache": ({"intra_modal": True, "ref_extras": True}, (4, 4), 2, (0, 5, 6)),
    "media_only_rows": ({"intra_modal": True, "ref_extras": True, "text_video": True}, (3, 5), 1, ()),
}
# scenario -> global rows without a caption (has_text False): the reference is one process on the
# whole batch with the same mask (tests/test_manifest.py checks that mask against dropping the rows)
MEDIA_ONLY = {"media_only_rows": (1, 3, 4)}


def has_text_mask(name: str) -> torch.Tensor:
    mask = torch.ones(GLOBAL_BATCH, dtype=torch.bool)
    mask[list(MEDIA_ONLY.get(name, ()))] = False
    return mask


class TinyTriEncoder(nn.Module):
    """Text and audio towers trainable, video tower frozen (as the paper freezes CLIP)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = nn.Linear(D_IN, D_FEAT)
        self.video = nn.Linear(D_IN, D_FEAT)
        self.audio = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_FEAT))
        self.video.requires_grad_(False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "text": self.text(batch["text"]),
            "video": self.video(batch["video"]),
            "audio": self.audio(batch["audio"]),
            "masked_audio": self.audio(batch["masked_audio"]),
        }


def build_model() -> TinyTriEncoder:
    torch.manual_seed(0)
    return TinyTriEncoder().to(DTYPE)


def global_batch(invalid: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Fixed inputs; rows in ``invalid`` get garbage (huge values) and ``valid`` False."""
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(GLOBAL_BATCH, D_IN, generator=g, dtype=DTYPE)
    keep = (torch.rand(GLOBAL_BATCH, D_IN, generator=g) > 0.3).to(DTYPE)
    batch = {
        "text": torch.randn(GLOBAL_BATCH, D_IN, generator=g, dtype=DTYPE),
        "video": torch.randn(GLOBAL_BATCH, D_IN, generator=g, dtype=DTYPE),
        "audio": audio,
        "masked_audio": audio * keep,
    }
    valid = torch.ones(GLOBAL_BATCH, dtype=torch.bool)
    valid[list(invalid)] = False
    batch = {k: torch.where(valid[:, None], v, torch.full_like(v, 1e4)) for k, v in batch.items()}
    batch["valid"] = valid
    return batch


def rows(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in batch.items()}


def make_loss(kwargs: dict):
    from clip4vla.losses import PretrainLoss

    torch.manual_seed(2)
    return PretrainLoss(**kwargs).to(DTYPE)


def grads_of(model: nn.Module, loss_module: nn.Module) -> dict[str, torch.Tensor]:
    out = {f"model.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    out.update({f"loss.{n}": p.grad.detach().clone() for n, p in loss_module.named_parameters() if p.grad is not None})
    return out


def features_and_valid(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**model({k: v for k, v in batch.items() if k != "valid"}), "valid": batch["valid"]}


def reference(name: str) -> tuple[float, dict[str, torch.Tensor]]:
    """Single process, whole global batch without its invalid rows, no accumulation."""
    kwargs, _, _, invalid = SCENARIOS[name]
    model, loss_module = build_model(), make_loss(kwargs)
    batch = global_batch()
    kept = torch.tensor([i for i in range(GLOBAL_BATCH) if i not in invalid])
    batch = {k: v[kept] for k, v in batch.items() if k != "valid"}
    extra = {"has_text": has_text_mask(name)} if name in MEDIA_ONLY else {}
    loss, _ = loss_module(**model(batch), **extra)
    loss.backward()
    return float(loss.detach()), grads_of(model, loss_module)


def run_scenarios(info) -> dict:
    from clip4vla.train.distributed import (
        all_reduce_grads_mean,
        all_reduce_mean,
        no_sync_factory,
        unwrap_model,
        wrap_ddp,
    )
    from clip4vla.train.grad_cache import cached_accumulation_step

    results = {}
    for name, (kwargs, split, accum, invalid) in SCENARIOS.items():
        batch = global_batch(invalid)
        model = wrap_ddp(build_model(), info)
        loss_module = make_loss(kwargs)
        start = sum(split[: info.rank])
        local = rows(batch, start, start + split[info.rank])
        if accum == 1:
            extra = {"has_text": has_text_mask(name)[start:start + split[info.rank]]} if name in MEDIA_ONLY else {}
            loss, _ = loss_module(**features_and_valid(model, local), **extra)
            loss.backward()
        else:
            n = split[info.rank]
            cuts = [round(i * n / accum) for i in range(accum + 1)]
            micro = [rows(local, a, b) for a, b in zip(cuts[:-1], cuts[1:])]
            loss, _ = cached_accumulation_step(
                lambda mb: model({k: v for k, v in mb.items() if k != "valid"}),
                micro,
                lambda feats: loss_module(**feats, valid=local["valid"]),
                no_sync=no_sync_factory(model),
            )
        all_reduce_grads_mean(loss_module.parameters())  # the logit scale lives outside DDP
        results[name] = {
            "loss": float(all_reduce_mean(loss.detach())),
            "grads": grads_of(unwrap_model(model), loss_module),
        }
    return results


def run_worker(out_dir: Path) -> None:
    from clip4vla.train.distributed import cleanup, init_distributed

    torch.set_num_threads(1)
    info = init_distributed(device="cpu")  # gloo even where CUDA exists: one GPU cannot host 2 ranks
    assert info.world_size == 2, info
    # the DDP wrappers are gone when run_scenarios returns; a DDP reducer that outlives its
    # process group aborts the interpreter at exit ("terminate called without an active exception")
    results = run_scenarios(info)
    gc.collect()
    torch.save(results, out_dir / f"results_rank{info.rank}.pt")
    cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.exit(run_worker(args.out))
