"""Caption decoding at ViT-B/32 width on CPU: captions/s, greedy and beam 5, cached and uncached.

The caption generator of a random ViT-B/32 CLIP4VLA (12-layer text tower, 4 fusion layers) over
frame and segment features of 12 frames + 16 segments per video; random weights rarely end a
caption early, so every caption runs the full ``max_words`` steps (the worst case). Both paths
produce the same tokens (``tests/test_captioner.py``); the cached one runs each new token once
through the text tower and the fusion layers instead of the whole prefix.

    PYTHONPATH=. python benchmarks/caption_decoding.py [--videos 4 --max-words 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from clip4vla.models.captioner import CaptionGenerator
from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.decoding import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--max-words", type=int, default=32)
    parser.add_argument("--beams", default="1,5")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.vit_b_32())
    model.attach_head("caption", CaptionGenerator.from_clip(model.clip, args.max_words, 4))
    model.eval()
    d, n = model.clip.config.embed_dim, args.videos
    frames, segments = torch.randn(n, 12, d), torch.randn(n, 16, d)
    fmask, smask = torch.ones(n, 12, dtype=torch.bool), torch.ones(n, 16, dtype=torch.bool)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ViT-B/32 caption generator, {n} videos, "
          f"max_words {args.max_words}, 12 frames + 16 segments each")
    print("| beam | path | seconds | captions/s | words per caption | speed-up |")
    print("|---|---|---|---|---|---|")
    for beam in (int(b) for b in args.beams.split(",")):
        timings = {}
        for cached in (True, False):
            generate(model, frames[:1], fmask[:1], segments[:1], smask[:1], beam=beam, max_words=4, cached=cached)
            start = time.perf_counter()
            words = generate(model, frames, fmask, segments, smask, beam=beam, max_words=args.max_words, cached=cached)
            timings[cached] = time.perf_counter() - start
            length = sum(len(w) for w in words) / n
            speed = "" if cached else f"cached {timings[False] / timings[True]:.1f}x faster"
            print(f"| {beam} | {'cached' if cached else 'uncached'} | {timings[cached]:.1f} | {n / timings[cached]:.2f} | "
                  f"{length:.1f} | {speed} |", flush=True)


if __name__ == "__main__":
    main()
