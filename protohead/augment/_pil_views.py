"""The PIL path of :class:`~protohead.augment.MultiCropTransform`: PIL ops called directly.

One :class:`PILViewChain` renders one crop kind (global or local) of an RGB PIL image. It makes
the same random draws, from torch's global generator and in the same order, as the
``torchvision.transforms.v2`` chain the transform documents (``RandomResizedCrop ->
RandomHorizontalFlip -> RandomApply([ColorJitter]) -> RandomGrayscale -> Gaussian blur ->
RandomSolarize -> ToImage -> ToDtype -> Normalize``), and runs the same PIL kernels on the
drawn parameters, so a seed gives bit-identical crops either way. It only skips v2's per-op
dispatch (input flattening, kernel lookup, tv_tensor wrapping): on t-ReX's crops of 256 px
images that halved the Python calls and cut the CPU time per image by about a fifth.

Brightness and contrast are applied through 256-entry lookup tables built by PIL's own blend
on a 0..255 ramp: PIL blends every byte independently, so the table reproduces
``ImageEnhance`` exactly while skipping its image-sized degenerate image.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageStat
from torchvision.transforms import InterpolationMode

__all__ = ["PILViewChain"]

_RESAMPLE: Final = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.NEAREST_EXACT: Image.Resampling.NEAREST,  # as torchvision on PIL
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
}
_RAMP: Final = Image.frombytes("L", (256, 1), bytes(range(256)))
_BLACK: Final = Image.new("L", (256, 1), 0)


def _jitter_range(strength: float, center: float) -> tuple[float, float] | None:
    """Factor range of torchvision's ColorJitter for one strength; None when it is a no-op."""
    lo = center - strength if center == 0.0 else max(0.0, center - strength)
    return None if lo == center + strength == center else (lo, center + strength)


def _uniform(lo: float, hi: float) -> float:
    # The same call as torchvision's transforms, so both consume the generator identically.
    return float(torch.empty(1).uniform_(lo, hi).item())


def _blend_lut(degenerate: int, factor: float) -> list[int]:
    """``Image.blend(constant degenerate, v, factor)`` for every byte ``v``, for ``point``."""
    base = _BLACK if degenerate == 0 else Image.new("L", (256, 1), degenerate)
    return list(Image.blend(base, _RAMP, factor).tobytes()) * 3


def _point(image: Image.Image, lut: list[int]) -> Image.Image:
    """``image.point(lut)`` for a table of ints, without its per-entry ``round`` in Python."""
    try:  # Image.point's own core call, minus its Python loop over the table
        return image._new(image.im.point(lut, None))
    except (AttributeError, TypeError):  # PIL internals moved: the public call, same pixels
        return image.point(lut)


def _brightness(image: Image.Image, factor: float) -> Image.Image:
    return _point(image, _blend_lut(0, factor))  # = ImageEnhance.Brightness(image).enhance


def _contrast(image: Image.Image, factor: float) -> Image.Image:
    # = ImageEnhance.Contrast(image).enhance: blend towards the rounded mean grey level.
    mean = int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)
    return _point(image, _blend_lut(mean, factor))


def _saturation(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Color(image).enhance(factor)


def _hue(image: Image.Image, factor: float) -> Image.Image:
    # torchvision's PIL hue shift: the H byte plus int(factor * 255), wrapping modulo 256.
    shift = int(factor * 255)
    h, s, v = image.convert("HSV").split()
    h = _point(h, [(i + shift) & 255 for i in range(256)])
    return Image.merge("HSV", (h, s, v)).convert("RGB")


_JITTER_OPS: Final = (_brightness, _contrast, _saturation, _hue)


class PILViewChain:
    """One crop kind of ``MultiCropTransform`` on an RGB PIL image -> normalised float tensor.

    Shapes: PIL ``(w, h)`` RGB -> ``(3, size, size)`` float32. Arguments are the transform's
    already-validated settings for this crop kind; an op whose probability is 0 (or jitter
    whose strengths are all 0) is left out, drawing nothing, as in the v2 chain.

    Example:
        >>> chain = PILViewChain(8, (0.5, 1.0), (0.75, 1.33), InterpolationMode.BICUBIC,
        ...                      0.5, (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.5, (0.1, 2.0), 0.2,
        ...                      (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        >>> chain(Image.new("RGB", (20, 16))).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        interpolation: InterpolationMode,
        flip_p: float,
        color_jitter: tuple[float, ...],
        color_jitter_p: float,
        grayscale_p: float,
        blur_p: float,
        blur_sigma: tuple[float, float],
        solarize_p: float,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        solarize_threshold: int = 128,
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio
        # As torchvision: log of the float32 ratio, so the aspect draws match bit for bit.
        self._log_ratio = tuple(float(v) for v in torch.log(torch.tensor(ratio)))
        self._resample = _RESAMPLE[interpolation]
        self.flip_p = flip_p
        ranges = [_jitter_range(s, 1.0) for s in color_jitter[:3]]
        self._jitter_ranges = (*ranges, _jitter_range(color_jitter[3], 0.0))
        self.color_jitter_p = color_jitter_p if any(self._jitter_ranges) else 0.0
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.solarize_p = solarize_p
        self._solarize_lut = [i if i < solarize_threshold else 255 - i for i in range(256)] * 3
        self._mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @classmethod
    def of(cls, settings: Any, kind: str, solarize_threshold: int) -> PILViewChain:
        """The ``kind`` ("global" or "local") chain of a ``MultiCropTransform``'s settings."""
        return cls(
            getattr(settings, f"{kind}_crop_size"),
            getattr(settings, f"{kind}_crop_scale"),
            settings.ratio,
            settings.interpolation,
            settings.flip_p,
            settings.color_jitter,
            settings.color_jitter_p,
            settings.grayscale_p,
            getattr(settings, f"{kind}_blur_p"),
            settings.blur_sigma,
            getattr(settings, f"{kind}_solarize_p"),
            settings.mean,
            settings.std,
            solarize_threshold,
        )

    def _box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's ``(top, left, h, w)``, drawn exactly as torchvision v2 does."""
        area = height * width
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = torch.exp(torch.empty(1).uniform_(*self._log_ratio)).item()
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return top, left, h, w
        # Fallback: the central crop of the ratio range closest to the image's.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _jitter(self, image: Image.Image) -> Image.Image:
        order = torch.randperm(4).tolist()
        factors = [None if r is None else _uniform(*r) for r in self._jitter_ranges]
        for op in order:
            factor = factors[op]
            if factor is not None:
                image = _JITTER_OPS[op](image, factor)
        return image

    def __call__(self, image: Image.Image) -> torch.Tensor:
        top, left, h, w = self._box(image.width, image.height)
        out = image.crop((left, top, left + w, top + h))
        if (h, w) != (self.size, self.size):
            out = out.resize((self.size, self.size), resample=self._resample)
        # Each op draws "skip?" first, as torchvision's RandomApply-style transforms.
        if self.flip_p > 0.0 and not torch.rand(1) >= self.flip_p:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.color_jitter_p > 0.0 and not torch.rand(1) >= self.color_jitter_p:
            out = self._jitter(out)
        if self.grayscale_p > 0.0 and not torch.rand(1) >= self.grayscale_p:
            out = out.convert("L").convert("RGB")
        if self.blur_p > 0.0 and float(torch.rand(())) < self.blur_p:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * float(torch.rand(()))
            out = out.filter(ImageFilter.GaussianBlur(radius=sigma))
        if self.solarize_p > 0.0 and not torch.rand(1) >= self.solarize_p:
            out = _point(out, self._solarize_lut)
        # ToImage -> ToDtype(scale=True) -> Normalize, with torchvision's exact arithmetic.
        pixels = torch.from_numpy(np.array(out, dtype=np.uint8, copy=True))
        x = pixels.permute(2, 0, 1).to(torch.float32).mul_(1.0 / 255)
        return x.sub_(self._mean).div_(self._std)
