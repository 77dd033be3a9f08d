"""Peak memory of loading a ViT-B/32-sized CLIP checkpoint with ``load_openai_clip``.

Writes a random ViT-B/32 checkpoint three ways (plain fp32 state dict, plain fp16 state dict,
TorchScript archive traced from our own model with OpenAI's fp16 layout and scalar buffers),
then loads each in a fresh subprocess and reports the peak RSS growth (VmHWM after the load
minus VmRSS before it, peak reset via /proc/self/clear_refs) against the fp32 weight size.
A "naive" row (random-init model + torch.load + load_state_dict copy) shows what the meta-device
/ assign path saves.

    python benchmarks/clip_load_memory.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import torch

from clip4vla.models.clip import CLIP, CLIPConfig

MIB = 2**20


# Same rule as OpenAI's released archives: LayerNorms and logit_scale stay float32.
def _keeps_fp32(key: str) -> bool:
    return ".ln_" in key or key.startswith(("ln_", "visual.ln_")) or key == "logit_scale"


def write_checkpoints(workdir: Path) -> tuple[dict[str, Path], int]:
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.vit_b_32()).eval()
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    paths = {"plain fp32": workdir / "vit_b32_fp32.pt", "plain fp16": workdir / "vit_b32_fp16.pt"}
    state = model.state_dict()
    torch.save(state, paths["plain fp32"])
    torch.save({k: v if _keeps_fp32(k) else v.half() for k, v in state.items()}, paths["plain fp16"])
    del state

    # TorchScript archive like OpenAI's: fp16 weights, 0-dim int64 scalars, traced methods.
    try:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not _keeps_fp32(name):
                    param.data = param.data.half()
        model.register_buffer("input_resolution", torch.tensor(224))
        model.register_buffer("context_length", torch.tensor(77))
        model.register_buffer("vocab_size", torch.tensor(49408))
        image = torch.randn(1, 3, 224, 224, dtype=torch.float16)
        tokens = torch.zeros(1, 77, dtype=torch.long)
        tokens[0, :3] = torch.tensor([49406, 320, 49407])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants
            traced = torch.jit.trace_module(model, {"encode_image": image, "encode_text": tokens})
        paths["TorchScript archive (fp16)"] = workdir / "vit_b32_jit.pt"
        torch.jit.save(traced, str(paths["TorchScript archive (fp16)"]))
    except Exception as err:  # keep the plain-file numbers even if tracing is unavailable
        print(f"TorchScript archive not written: {type(err).__name__}: {err}", file=sys.stderr)
    return paths, weight_bytes


_CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from clip4vla.models.clip import CLIP, CLIPConfig, load_openai_clip

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    mode, path = sys.argv[1], sys.argv[2]
    before = status("VmRSS")
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    if mode == "ours":
        model = load_openai_clip(path)
    else:  # naive: random model, full state dict in memory, copy into parameters
        model = CLIP(CLIPConfig.vit_b_32())
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        del state
    print(json.dumps({"before": before, "peak": status("VmHWM"), "after": status("VmRSS"), "reset": reset,
                      "params": sum(p.numel() for p in model.parameters())}))
    """
)


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the ~1 GB of checkpoints")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        paths, weight_bytes = write_checkpoints(Path(tmp))
        print(f"ViT-B/32: {weight_bytes / MIB:.0f} MiB of float32 weights")
        print(f"{'checkpoint':<30} {'loader':<6} {'file MiB':>9} {'peak dRSS MiB':>14} {'x weights':>10}")
        runs = [("ours", name) for name in paths] + [("naive", "plain fp32")]
        for mode, name in runs:
            result = measure(mode, paths[name])
            delta = result["peak"] - result["before"]
            size = paths[name].stat().st_size
            note = "" if result["reset"] else "  (peak not reset: includes import)"
            print(f"{name:<30} {mode:<6} {size / MIB:>9.0f} {delta / MIB:>14.0f} {delta / weight_bytes:>10.2f}{note}")


if __name__ == "__main__":
    main()
