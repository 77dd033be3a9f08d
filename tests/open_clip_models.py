"""Tiny random CLIPs made by open_clip's own code and saved in its file formats (issue 20's tests).

Each model gets a custom open_clip model config (registered with ``open_clip.add_model_config``) and
is created with ``open_clip.create_model``; nothing is downloaded. One QuickGELU model (saved as
``open_clip_pytorch_model.bin``), one GELU model (``open_clip_model.safetensors``) and one GELU
model at 64 px with 16-px patches (``create_model(...).state_dict()`` written with ``torch.save``);
:func:`open_clip_hub_folder` writes any model config as a downloaded hub folder (weights and
``open_clip_config.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# name -> (activation, image side, patch, how the file is written)
OPEN_CLIP_MODELS = {
    "quick_gelu": {"activation": "quick_gelu", "resolution": 224, "patch": 32, "file": "open_clip_pytorch_model.bin"},
    "gelu": {"activation": "gelu", "resolution": 224, "patch": 32, "file": "open_clip_model.safetensors"},
    "gelu_64px": {"activation": "gelu", "resolution": 64, "patch": 16, "file": "state_dict.pt"},
}


def _config(spec: dict) -> dict:
    """An open_clip model config: OpenAI's ViT layout, 64-wide heads, shrunk to seconds on a CPU."""
    return {
        "embed_dim": 32,
        "quick_gelu": spec["activation"] == "quick_gelu",
        "vision_cfg": {"image_size": spec["resolution"], "layers": 2, "width": 64, "patch_size": spec["patch"]},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }


def open_clip_files(folder: Path) -> dict[str, tuple[Path, torch.nn.Module]]:
    """``{name: (file, the open_clip model in eval mode)}`` for every model of :data:`OPEN_CLIP_MODELS`."""
    import open_clip
    from safetensors.torch import save_file

    configs = folder / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for name, spec in OPEN_CLIP_MODELS.items():
        (configs / f"clip4vla-test-{name}.json").write_text(json.dumps(_config(spec)))
    open_clip.add_model_config(configs)
    out = {}
    for i, (name, spec) in enumerate(OPEN_CLIP_MODELS.items()):
        torch.manual_seed(100 + i)
        model = open_clip.create_model(f"clip4vla-test-{name}").eval()
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        path = folder / name / spec["file"]
        path.parent.mkdir()
        if path.suffix == ".safetensors":
            save_file(state, path)
        else:
            torch.save(state, path)
        out[name] = (path, model)
    return out


def open_clip_hub_folder(folder: Path, name: str, model_cfg: dict, seed: int = 7) -> tuple[Path, torch.nn.Module]:
    """``(folder / name / open_clip_model.safetensors, the open_clip model in eval mode)``, with the
    ``open_clip_config.json`` open_clip publishes beside its weights."""
    import open_clip
    from safetensors.torch import save_file

    configs = folder / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"clip4vla-test-{name}.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(configs)
    torch.manual_seed(seed)
    model = open_clip.create_model(f"clip4vla-test-{name}").eval()
    hub = folder / name
    hub.mkdir()
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
              hub / "open_clip_model.safetensors")
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return hub / "open_clip_model.safetensors", model
