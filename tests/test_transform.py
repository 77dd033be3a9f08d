"""CLIP image transform: shapes, constants, crop geometry, tensor route vs the PIL reference route."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import InterpolationMode

import clip4vla.video.transform as transform_module
from clip4vla.video.transform import CLIP_MEAN, CLIP_STD, ClipImageTransform, clip_transform

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)
# One grey level after normalisation, per channel (the largest is for the smallest std).
LEVEL = (1.0 / 255.0) / STD


def scene(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Deterministic natural-looking uint8 image [3,h,w]: gradients, a darker box, mild noise.

    Values stay in [15, 240] so that bicubic overshoot is never clipped at 0/255 (see the
    tolerance note in ``test_tensor_route_matches_pil_reference``).
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(12 * xx + 3 * yy), 0.2 + 0.6 * yy, 0.5 + 0.3 * torch.cos(9 * xx * yy)])
    box = ((xx > 0.3) & (xx < 0.6) & (yy > 0.2) & (yy < 0.7)).float()
    img = img * (1 - 0.3 * box) + 0.05 * torch.randn(3, h, w, generator=g)
    return (img.clamp(0.06, 0.94) * 255).round().to(torch.uint8)


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy(), mode="RGB")


# The reference route (OpenAI CLIP `_transform`), built from torchvision's PIL transforms.
REFERENCE = T.Compose(
    [
        T.Resize(224, interpolation=InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        lambda im: im.convert("RGB"),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ]
)


def test_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("hw", [(224, 224), (100, 150), (300, 200)])
def test_constant_image_gives_normalised_constant(hw):
    # Bicubic weights sum to one, so a flat image stays flat at any scale; only the
    # normalisation changes the values.
    x = torch.empty(3, *hw, dtype=torch.uint8)
    x[0], x[1], x[2] = 10, 128, 250
    out = clip_transform(x)
    expected = (torch.tensor([10, 128, 250]).view(3, 1, 1) / 255.0 - MEAN) / STD
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, expected.expand(3, 224, 224), atol=1e-6, rtol=0)


def test_shapes_and_dtype():
    x = scene(120, 160)
    assert clip_transform(x).shape == (3, 224, 224)
    clip = torch.stack([scene(120, 160, s) for s in range(4)])
    out = clip_transform(clip)
    assert out.shape == (4, 3, 224, 224) and out.dtype == torch.float32
    assert clip_transform(clip, size=32).shape == (4, 3, 32, 32)
    assert ClipImageTransform(64)(x).shape == (3, 64, 64)
    assert clip_transform(to_pil(x)).shape == (3, 224, 224)
    assert clip_transform([to_pil(x), to_pil(x)]).shape == (2, 3, 224, 224)
    assert clip_transform(clip[:0]).shape == (0, 3, 224, 224)
    assert clip_transform([]).shape == (0, 3, 224, 224)
    assert repr(ClipImageTransform()) == "ClipImageTransform(size=224)"


def test_already_224_only_normalises():
    x = scene(224, 224)
    out = clip_transform(x)
    torch.testing.assert_close(out, (x.float() / 255 - MEAN) / STD, atol=1e-6, rtol=0)
    torch.testing.assert_close(clip_transform(to_pil(x)), out, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw, rows, cols", [((224, 448), slice(None), slice(112, 336)), ((448, 224), slice(112, 336), slice(None))])
def test_short_side_224_is_centre_cropped_without_resampling(hw, rows, cols):
    x = scene(*hw)
    out = clip_transform(x)
    torch.testing.assert_close(out, (x[:, rows, cols].float() / 255 - MEAN) / STD, atol=1e-6, rtol=0)


@pytest.mark.parametrize("landscape", [True, False])
def test_aspect_ratio_keeps_centre(landscape: bool):
    # Red/blue outer bands (3/16 of the long side each), green in between: the centre crop keeps
    # the middle half, so only green survives, away from the bicubic bleed at the band edges
    # (a stretch-to-square resize would keep red and blue).
    long, short = 896, 448
    edge = 3 * long // 16
    x = torch.zeros(3, short, long, dtype=torch.uint8)
    x[0, :, :edge] = 255
    x[2, :, long - edge :] = 255
    x[1, :, edge : long - edge] = 255
    if not landscape:
        x = x.transpose(1, 2).contiguous()
    out = clip_transform(x) * STD + MEAN  # back to [0, 1]
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out[1], torch.ones(224, 224), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[[0, 2]], torch.zeros(2, 224, 224), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(360, 480), (480, 360), (617, 295), (728, 270), (40, 60), (223, 1000), (1080, 1920)])
def test_tensor_route_matches_pil_reference(hw):
    """Tolerance: at most 2 grey levels per pixel, mean below 0.5 level.

    Both routes quantise to uint8 after each of the two separable bicubic passes, with
    different fixed-point coefficient precision, and Pillow may run the vertical pass first
    where torch runs the horizontal one (e.g. 617x295, 728x270): each pass can then round a
    pixel differently by one level, so two levels in all; the mean stays a fraction of a level.
    (On saturated noise, where overshoot is clipped between passes, a different pass order can
    move isolated pixels by more; natural frames and this test image do not clip.)
    """
    x = scene(*hw, seed=hw[0])
    ours = clip_transform(x)
    ref = REFERENCE(to_pil(x))
    assert ours.shape == ref.shape == (3, 224, 224)
    diff = (ours - ref).abs()
    assert (diff <= 2 * LEVEL + 1e-6).all(), f"max diff {(diff / LEVEL).max():.3f} levels"
    assert (diff / LEVEL).mean() < 0.5


@pytest.mark.parametrize("hw", [(360, 480), (617, 295), (40, 60)])
def test_pil_route_is_the_reference(hw):
    img = to_pil(scene(*hw))
    torch.testing.assert_close(clip_transform(img), REFERENCE(img), atol=1e-6, rtol=0)
    batch = clip_transform([img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    torch.testing.assert_close(batch[0], REFERENCE(img), atol=1e-6, rtol=0)
    torch.testing.assert_close(batch[1], REFERENCE(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), atol=1e-6, rtol=0)


def test_float_input_equals_uint8_input():
    x = scene(200, 300)
    torch.testing.assert_close(clip_transform(x.float() / 255), clip_transform(x), atol=0, rtol=0)
    torch.testing.assert_close(clip_transform(x.double() / 255), clip_transform(x), atol=0, rtol=0)


def test_batched_in_one_resize_call_and_equal_to_per_frame(monkeypatch):
    clip = torch.stack([scene(180, 320, s) for s in range(5)])
    calls = []
    real_resize = transform_module.TF.resize

    def counting_resize(*args, **kwargs):
        calls.append(args[0].shape)
        return real_resize(*args, **kwargs)

    monkeypatch.setattr(transform_module.TF, "resize", counting_resize)
    out = clip_transform(clip)
    assert len(calls) == 1 and calls[0][0] == 5  # all frames in one call
    monkeypatch.undo()
    per_frame = torch.stack([clip_transform(f) for f in clip])
    torch.testing.assert_close(out, per_frame, atol=0, rtol=0)


def test_channels_last_view_input():
    # Frames decoded as [F,H,W,3] and permuted are a non-contiguous view; same result.
    clip = torch.stack([scene(180, 320, s) for s in range(3)])
    view = clip.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not view.is_contiguous()
    torch.testing.assert_close(clip_transform(view), clip_transform(clip), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_pil_modes_converted_to_rgb(mode: str):
    rgb = to_pil(scene(150, 200))
    img = rgb.convert(mode)
    out = clip_transform(img)
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, clip_transform(img.convert("RGB")), atol=0, rtol=0)
    if mode == "L":
        # Grey input gives three identical channels before normalisation.
        raw = out * STD + MEAN
        torch.testing.assert_close(raw[0], raw[1], atol=1e-6, rtol=0)
        # Resizing L then converting (the reference order) is the same for grey images.
        torch.testing.assert_close(out, REFERENCE(img), atol=1e-6, rtol=0)


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[3,H,W\] or \[F,3,H,W\].*\(224, 224\)"):
        clip_transform(torch.zeros(224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        clip_transform(torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels-last"):
        clip_transform(torch.zeros(240, 320, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="grayscale/RGBA"):
        clip_transform(torch.zeros(2, 4, 240, 320, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty image"):
        clip_transform(torch.zeros(3, 0, 10, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.int32"):
        clip_transform(torch.zeros(3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        clip_transform(torch.full((3, 8, 8), 255.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clip_transform(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="ndarray"):
        clip_transform(np.zeros((3, 8, 8), dtype=np.uint8))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1"):
        clip_transform([to_pil(scene(8, 8)), torch.zeros(3, 8, 8)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="size"):
        ClipImageTransform(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_input_stays_on_device_and_close_to_cpu():
    # On CUDA torchvision resizes uint8 through float32 (no Pillow-style uint8 kernel), so the
    # result is not bit-equal to the CPU route; on this smooth test image the float path stays
    # within about 1.5 grey levels of Pillow (measured on CPU), hence the bounds below.
    clip = torch.stack([scene(360, 480, s) for s in range(3)])
    out = clip_transform(clip.cuda())
    assert out.device.type == "cuda" and out.shape == (3, 3, 224, 224)
    diff = (out.cpu() - clip_transform(clip)).abs() / LEVEL
    assert diff.max() <= 3 and diff.mean() < 1
