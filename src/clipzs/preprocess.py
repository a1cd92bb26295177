"""CLIP's image preprocessing, split so that the per-image work is as small as it can be.

open_clip's evaluation transform is `[PIL steps (resize, crop, RGB)] + ToTensor + Normalize`. The PIL
steps run per image (or, for same-sized square uint8 arrays such as CIFAR, as a batched tensor
emulation of Pillow's bicubic resampling that gives the same bytes); scaling to [0, 1] and
normalising run batched on the model's device, with the same float32 operations as ToTensor and
Normalize, so the model sees the same input either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image

from .errors import ClipzsError

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point coefficients for 8-bit images (libImaging/Resample.c)


@dataclass(frozen=True)
class Preprocessing:
    """The PIL part of a transform, its normalisation, and the square size when it is Resize(S)+CenterCrop(S)."""

    pil: Callable[[Image.Image], Image.Image]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    square: int | None
    description: str

    def pixels(self, image: Image.Image) -> np.ndarray:
        """[H, W, 3] uint8 after the PIL steps."""
        return np.array(self.pil(image), dtype=np.uint8)

    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, 3, H, W] pixels (uint8, or float holding integers) -> model input, as ToTensor + Normalize do it."""
        x = pixels.to(torch.float32).div_(255)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)[:, None, None]
        return x.sub_(mean).div_(std).to(dtype)


def to_rgb(image: Image.Image) -> Image.Image:
    """open_clip's RGB step (`_convert_to_rgb`, or `MaybeConvertMode("RGB")` on a PIL image), as clipzs's own
    function: a `Preprocessing` then pickles without open_clip, so Ray's read workers do not import it (2 s)."""
    return image.convert("RGB")


def _is_rgb_step(step: object) -> bool:
    from open_clip.transform import MaybeConvertMode

    return (isinstance(step, MaybeConvertMode) and step.mode == "RGB") or getattr(
        step, "__name__", ""
    ) == "_convert_to_rgb"


def _square_size(steps: list) -> int | None:
    """S when the PIL steps are exactly Resize(S, bicubic) + CenterCrop(S) (+ RGB conversion), else None."""
    from torchvision import transforms as T

    core = [s for s in steps if not _is_rgb_step(s)]
    if len(core) != 2 or not isinstance(core[0], T.Resize) or not isinstance(core[1], T.CenterCrop):
        return None
    resize, crop = core
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    if size is None or resize.interpolation != T.InterpolationMode.BICUBIC or resize.max_size is not None:
        return None
    return size if tuple(crop.size) == (size, size) else None


def split_preprocess(preprocess: Callable) -> Preprocessing:
    """Split open_clip's evaluation transform at ToTensor; anything else is not a transform clipzs knows."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    at = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if at is None or len(steps) != at + 2 or not isinstance(steps[-1], T.Normalize):
        raise ClipzsError(f"unsupported image preprocessing (expected PIL steps, ToTensor, Normalize): {preprocess}")
    normalize = steps[-1]
    return Preprocessing(
        pil=T.Compose([to_rgb if _is_rgb_step(s) else s for s in steps[:at]]),
        mean=tuple(float(m) for m in normalize.mean),
        std=tuple(float(s) for s in normalize.std),
        square=_square_size(steps[:at]),
        description=" ".join(repr(preprocess).split()),
    )


def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel (a = -0.5), written with its operation order so the doubles agree."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@cache
def pil_bicubic_weights(in_size: int, out_size: int) -> torch.Tensor:
    """[out, in] float64 matrix of Pillow's fixed-point bicubic coefficients (precompute_coeffs, normalize_coeffs_8bpc).

    Products of 8-bit pixels and these integers, and their sums, stay far below 2**53, so a float64
    matrix product computes Pillow's integer sums exactly.
    """
    scale = filterscale = in_size / out_size
    filterscale = max(filterscale, 1.0)
    support = 2.0 * filterscale
    reciprocal = 1.0 / filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_bicubic((x + xmin - center + 0.5) * reciprocal) for x in range(xmax)]
        total = 0.0
        for w in k:
            total += w
        if total != 0.0:
            k = [w / total for w in k]
        fixed = [int(-0.5 + w * (1 << PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << PRECISION_BITS)) for w in k]
        weights[xx, xmin : xmin + xmax] = torch.tensor(fixed, dtype=torch.float64)
    return weights


def _round_pass(sums: torch.Tensor) -> torch.Tensor:
    """Pillow's end of a pass: add half, shift right by PRECISION_BITS, clip to 0..255."""
    return torch.floor((sums + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def resize_bicubic_like_pil(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, size, size] float64 holding the bytes Pillow's bicubic resize would give.

    Horizontal pass then vertical pass, each rounded to 8 bits, as libImaging/Resample.c does; each pass
    is one matrix product over the whole batch.
    """
    batch, height, width, channels = pixels.shape
    x = pixels.to(torch.float64).permute(1, 0, 3, 2)  # [H, B, C, W]
    if width != size:
        x = _round_pass(x @ pil_bicubic_weights(width, size).to(x.device).T)
    columns = x.shape[-1]
    x = x.reshape(height, -1)  # [H, B*C*W']
    if height != size:
        x = _round_pass(pil_bicubic_weights(height, size).to(x.device) @ x)
    return x.view(size, batch, channels, columns).permute(1, 2, 0, 3)
