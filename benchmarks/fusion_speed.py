"""Fusion heads at ViT-B/32 width on CPU: L2L pairs/s and the G2L overhead per video.

* L2L: ``FusionHead.similarity`` over texts x videos (32 tokens + 12 frames + 16 segments per
  pair, 4 layers of width 512), no grad, in the evaluation's pair chunks.
* G2L: the fusion transformer over ``[12 frames ; 16 segments]`` per video, against the cost of
  encoding that video's frames and segments with the ViT-B/32 towers (what G2G already pays).

    PYTHONPATH=. python benchmarks/fusion_speed.py [--texts 32 --videos 32 --words 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from clip4vla.models.clip import CLIP, CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.fusion import FusionHead

FRAMES, SEGMENTS, MAX_WORDS = 12, 16, 32


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--words", type=int, default=20, help="tokens per caption, [SOT] and [EOT] included")
    parser.add_argument("--g2l-videos", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = CLIPConfig.vit_b_32()
    clip = CLIP(cfg).eval()
    d = cfg.embed_dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ViT-B/32 width {d}, 4 fusion layers")

    l2l = FusionHead.from_clip(clip, "l2l", 4).eval()
    tokens = torch.zeros(args.texts, MAX_WORDS, dtype=torch.long)
    tokens[:, : args.words] = 1000
    text = {"tokens": torch.randn(args.texts, MAX_WORDS, d), "token_mask": tokens != 0}
    video = {"frames": torch.randn(args.videos, FRAMES, d), "frame_mask": torch.ones(args.videos, FRAMES, dtype=torch.bool),
             "segments": torch.randn(args.videos, SEGMENTS, d),
             "segment_mask": torch.ones(args.videos, SEGMENTS, dtype=torch.bool)}
    with torch.no_grad():
        seconds = timed(lambda: l2l.similarity(text, video, 100.0))
    pairs = args.texts * args.videos
    print(f"L2L: {pairs / seconds:.0f} pairs/s ({args.words}-token captions + {FRAMES} frames + {SEGMENTS} segments "
          f"= {args.words + FRAMES + SEGMENTS} tokens per pair; {pairs} pairs in {seconds:.2f} s); a 1k x 1k "
          f"MSR-VTT test would take {1e6 / (pairs / seconds) / 60:.0f} min per modality")

    g2l = FusionHead.from_clip(clip, "g2l", 4).eval()
    n = args.g2l_videos
    frames, segments = torch.randn(n, FRAMES, d), torch.randn(n, SEGMENTS, d)
    fmask, smask = torch.ones(n, FRAMES, dtype=torch.bool), torch.ones(n, SEGMENTS, dtype=torch.bool)
    with torch.no_grad():
        g2l_s = timed(lambda: g2l.video_side(frames, fmask, segments, smask, "av")) / n
        model = CLIP4VLA.from_clip(clip).eval()
        pixels = torch.randn(2, FRAMES, 3, 224, 224)
        spectra = torch.randn(2, SEGMENTS, 3, 224, 224)
        mask_f, mask_s = torch.ones(2, FRAMES, dtype=torch.bool), torch.ones(2, SEGMENTS, dtype=torch.bool)
        encode_s = timed(lambda: (model.encode_video(pixels, mask_f), model.encode_audio(spectra, mask_s, 0.5)), 1) / 2
    print(f"G2L: {1000 * g2l_s:.2f} ms per video for the fusion transformer, against {1000 * encode_s:.0f} ms to "
          f"encode its {FRAMES} frames and {SEGMENTS} segments: +{100 * g2l_s / encode_s:.2f} % over G2G")


if __name__ == "__main__":
    main()
