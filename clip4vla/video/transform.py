"""CLIP image transform: short side -> S (bicubic), centre crop S, RGB, CLIP mean/std.

Two routes give (nearly) the same numbers:

* tensors (``[3,H,W]`` or ``[F,3,H,W]``, uint8 or float in [0, 1]) are resized in **one batched
  call** for all frames with torchvision's antialiased bicubic. On CPU the uint8 kernel quantises
  after each separable pass like Pillow does, so it lands within 1-2 grey levels of the PIL route
  (see ``tests/test_transform.py`` for the measured bound and why);
* PIL images take the reference route (Pillow bicubic), one image at a time.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipImageTransform", "clip_transform"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Union[torch.Tensor, Image.Image, Sequence[Image.Image]]


def _check_tensor(x: torch.Tensor) -> torch.Tensor:
    """Validate a tensor image/clip and return it as uint8 ``[F,3,H,W]``."""
    if x.ndim not in (3, 4):
        raise ValueError(f"clip_transform expects a tensor [3,H,W] or [F,3,H,W], got shape {tuple(x.shape)}")
    if x.shape[-3] != 3:
        hint = ""
        if x.shape[-1] in (1, 3, 4):
            hint = " (it looks channels-last: permute to [..., C, H, W])"
        elif x.shape[-3] in (1, 4):
            hint = " (convert grayscale/RGBA to 3 RGB channels first)"
        raise ValueError(f"clip_transform expects 3 RGB channels at dim -3, got shape {tuple(x.shape)}{hint}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"clip_transform got an empty image, shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"clip_transform expects uint8 or float tensors, got {x.dtype}")
    if x.numel():
        lo, hi = torch.aminmax(x)
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"float images must lie in [0, 1], got range [{lo.item():.4g}, {hi.item():.4g}] "
                "(pass uint8 for 0-255 data)"
            )
    # Float input is quantised to 8 bits so that it takes the PIL-compatible uint8 route:
    # CLIP was trained on Pillow's uint8 output (which clamps bicubic overshoot between the two
    # resize passes), and uint8 and x/255 inputs of the same picture then give identical results.
    return x.mul(255.0).round_().to(torch.uint8)


def _resize_crop_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[F,3,H,W]`` -> uint8 ``[F,3,size,size]``: one call for all frames, no frame loop."""
    if min(x.shape[-2:]) != size:
        x = TF.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [size, size])


def _resize_crop_pil(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> uint8 ``[3,size,size]`` with Pillow's own bicubic (the reference route)."""
    # REF (OpenAI preprocess) converts to RGB *after* resizing, which resamples palette images
    # with nearest-neighbour and RGBA with premultiplied alpha; converting first gives every mode
    # the same bicubic and matches the tensor route. Identical for RGB and L images.
    if img.mode != "RGB":
        img = img.convert("RGB")
    if min(img.size) != size:
        img = TF.resize(img, [size], interpolation=InterpolationMode.BICUBIC)
    img = TF.center_crop(img, [size, size])
    return TF.pil_to_tensor(img)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[...,3,S,S]`` -> float32 normalised with the CLIP mean/std."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def clip_transform(x: ImageInput, size: int = 224) -> torch.Tensor:
    """CLIP preprocessing of one image or a clip of frames.

    Args:
        x: uint8 (0-255) or float (0-1) tensor ``[3,H,W]`` / ``[F,3,H,W]``, a PIL image or a
            list of PIL images.
        size: output side S.

    Returns:
        float32 ``[3,S,S]`` for a single image (3-D tensor or one PIL image), else ``[F,3,S,S]``.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if isinstance(x, torch.Tensor):
        single = x.ndim == 3
        frames = _check_tensor(x)
        if single:
            frames = frames.unsqueeze(0)
        if frames.shape[0] == 0:
            return torch.empty(0, 3, size, size, dtype=torch.float32, device=x.device)
        out = _normalise(_resize_crop_tensor(frames, size))
        return out[0] if single else out
    if isinstance(x, Image.Image):
        return _normalise(_resize_crop_pil(x, size))
    if isinstance(x, (list, tuple)):
        for i, img in enumerate(x):
            if not isinstance(img, Image.Image):
                raise TypeError(f"clip_transform: item {i} of the list is {type(img).__name__}, expected a PIL image")
        if not x:
            return torch.empty(0, 3, size, size, dtype=torch.float32)
        # Pillow has no batched resize: one call per image is inherent to this route.
        return _normalise(torch.stack([_resize_crop_pil(img, size) for img in x]))
    raise TypeError(
        f"clip_transform expects a torch.Tensor, a PIL image or a list of PIL images, got {type(x).__name__}"
    )


class ClipImageTransform:
    """Callable form of :func:`clip_transform` with a fixed output size (for datasets/configs)."""

    def __init__(self, size: int = 224) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size

    def __call__(self, x: ImageInput) -> torch.Tensor:
        return clip_transform(x, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"
