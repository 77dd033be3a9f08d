"""Timing of the pre-training loss and of feature-cached accumulation (CPU or GPU).

    python benchmarks/bench_train_losses.py [--device cpu] [--threads 2]

Prints: PretrainLoss forward+backward time per global batch size (D = 512, intra-modal on), and
the cost of cached accumulation (k micro-batches) against one big batch for a small trainable
encoder, so the price of keeping every negative is visible (ideally ~ +1 forward of the
trainable towers).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from clip4vla.losses import PretrainLoss
from clip4vla.train.grad_cache import cached_accumulation_step


def timed(fn, device, reps=5, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_loss(device, dim=512):
    loss_fn = PretrainLoss(intra_modal=True).to(device)
    for batch in (256, 1024, 4096):
        feats = [torch.randn(batch, dim, device=device, requires_grad=True) for _ in range(4)]

        def step():
            total, _ = loss_fn(*feats)
            total.backward()

        print(f"PretrainLoss fwd+bwd  B={batch:5d} D={dim}: {1000 * timed(step, device):8.2f} ms")


class Encoder(nn.Module):
    def __init__(self, d_in=768, hidden=1536, d_out=512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, d_out))

    def forward(self, batch):
        return {"audio": self.net(batch["audio"]), "masked_audio": self.net(batch["masked"])}


def bench_grad_cache(device, batch=1024, k=4):
    torch.manual_seed(0)
    enc = Encoder().to(device)
    loss_fn = PretrainLoss(intra_modal=True).to(device)
    data = {"audio": torch.randn(batch, 768, device=device), "masked": torch.randn(batch, 768, device=device)}
    text, video = torch.randn(batch, 512, device=device), torch.randn(batch, 512, device=device)

    def big():
        enc.zero_grad()
        feats = enc(data)
        loss_fn(text, video, feats["audio"], feats["masked_audio"])[0].backward()

    micro = [{key: v.chunk(k)[i] for key, v in data.items()} for i in range(k)]
    frozen = [{"text": t, "video": v} for t, v in zip(text.chunk(k), video.chunk(k))]

    def cached():
        enc.zero_grad()
        cached_accumulation_step(
            lambda mb: enc(mb[0]),
            list(zip(micro, frozen)),
            lambda f: loss_fn(f["text"], f["video"], f["audio"], f["masked_audio"]),
            frozen_encode_fn=lambda mb: mb[1],  # frozen towers: features computed once
        )

    t_big = timed(big, device)
    t_cached = timed(cached, device)
    print(f"one batch of {batch}            : {1000 * t_big:8.2f} ms")
    print(f"cached accumulation {k} x {batch // k}   : {1000 * t_cached:8.2f} ms  ({t_cached / t_big:.2f}x)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    bench_loss(device)
    bench_grad_cache(device)


if __name__ == "__main__":
    main()
