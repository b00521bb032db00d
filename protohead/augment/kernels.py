"""Unchecked hot-path kernels behind :mod:`protohead.augment.functional` and ``BatchedMultiCrop``.

Every kernel works on float images ``(n, 3, h, w)`` in ``[0, 1]`` with one parameter per
sample and reproduces a torchvision float formula (t-ReX multi-crop, Sariyildiz et al., ICLR
2023). Two execution strategies give the same result:

- On accelerators every op runs on every sample with masks or identity parameters, so shapes
  never depend on data and the host never waits for the device.
- On the CPU (:func:`compacts`) data-dependent shapes are free, so optional ops skip the
  samples they leave unchanged and the jitter runs each op only on the samples that use it at
  that position. Kernels there prefer in-place arithmetic and reused buffers: fresh
  image-sized temporaries (e.g. from ``where``) cost page faults, often more than the math.

Arguments are not checked here; see :mod:`protohead.augment.functional` for the checked API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

# The jitter strategies are re-exported (``as``): tests compare them through this module.
from protohead.augment._color import _compare, blend_, col, hue_rotate, luma
from protohead.augment._color import _jitter_grouped_ as _jitter_grouped_
from protohead.augment._color import _jitter_slots_ as _jitter_slots_
from protohead.augment._separable_filters import crop_resize_separable, gaussian_blur_bags

__all__ = [
    "blend_",
    "blur_separable",
    "blur_some",
    "blur_taps",
    "color_jitter_",
    "compacts",
    "crop_chain",
    "crop_resize",
    "flip_some",
    "fused_crop_chain",
    "grayscale_some",
    "hue_rotate",
    "luma",
    "solarize_some",
]

# MultiCropTransform solarizes at 128 on the uint8 scale.
SOLARIZE_THRESHOLD = 128 / 255
# Downscale factor from which resampling averages several bilinear samples per pixel.
ANTIALIAS_FROM = 1.5


def compacts(device: torch.device) -> bool:
    """Whether kernels may use data-dependent shapes on ``device`` (the CPU only)."""
    return device.type == "cpu"


def color_jitter_(
    x: Tensor, order: Tensor, factors: Tensor, apply: Tensor, use_hue: bool = True
) -> Tensor:
    """Per-sample ColorJitter on the samples where ``apply``; in place, may return a new tensor.

    ``order`` ``(n, 4)`` are permutations of 0 brightness, 1 contrast, 2 saturation, 3 hue;
    ``factors`` ``(n, 4)``; ``use_hue=False`` promises every hue factor is 0 (skips that pass).
    """
    if compacts(x.device):
        return _jitter_grouped_(x, order, factors, apply, use_hue)
    return _jitter_slots_(x, order, factors, apply, use_hue)


def blur_taps(sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """``(n,) -> (n, k)`` normalised Gaussian taps (as torchvision); an impulse if not applied."""
    half = kernel_size // 2
    t = torch.linspace(-half, half, kernel_size, dtype=sigma.dtype, device=sigma.device)
    w = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    w = w / w.sum(dim=1, keepdim=True)
    impulse = (t == 0).to(w.dtype).expand_as(w)
    return torch.where(apply[:, None], w, impulse)


def blur_separable(x: Tensor, weights: Tensor, shift: bool | None = None) -> Tensor:
    """Separable blur with per-sample taps ``(n, k)`` and reflect padding (as torchvision).

    Three equal formulations: shift-and-add (``shift=True``; the form ``torch.compile`` fuses
    into one kernel per axis), a grouped convolution, one kernel per sample and channel
    (``shift=False``; the eager default on accelerators) and, the default on the CPU, weighted
    row gathers (:func:`~protohead.augment._separable_filters.gaussian_blur_bags`: a few times
    faster than shift-and-add there, which beats the convolution several times over).
    """
    if shift is None:
        if x.device.type == "cpu":
            return gaussian_blur_bags(x, weights)
        shift = False
    if shift:
        return _blur_shift(x, weights)
    return _blur_conv(x, weights)


def _blur_conv(x: Tensor, weights: Tensor) -> Tensor:
    n, c, h, w = x.shape
    k = weights.shape[1]
    half = k // 2
    taps = weights.repeat_interleave(c, dim=0)  # one depthwise kernel per (sample, channel)
    padded = F.pad(x, (half, half, half, half), mode="reflect").view(1, n * c, h + k - 1, -1)
    out = F.conv2d(padded, taps.view(n * c, 1, k, 1), groups=n * c)
    out = F.conv2d(out, taps.view(n * c, 1, 1, k), groups=n * c)
    return out.view(n, c, h, w)


def _blur_shift(x: Tensor, weights: Tensor) -> Tensor:
    n, _, h, w = x.shape
    k = weights.shape[1]
    half = k // 2
    taps = weights.view(n, 1, 1, 1, k)
    # Rows first (contiguous slices), then the same on the transposed image for the columns.
    padded = F.pad(x, (0, 0, half, half), mode="reflect")
    rows = padded[:, :, :h] * taps[..., 0]
    for t in range(1, k):
        rows.addcmul_(padded[:, :, t : t + h], taps[..., t])
    padded = F.pad(rows, (half, half, 0, 0), mode="reflect").transpose(2, 3)
    cols = padded[:, :, :w] * taps[..., 0]
    for t in range(1, k):
        cols.addcmul_(padded[:, :, t : t + w], taps[..., t])
    return cols.transpose(2, 3)


def _selected(mask: Tensor) -> Tensor | None:
    """Indices where ``mask`` is true where that is free (CPU), else None (use the mask)."""
    return mask.nonzero().squeeze(1) if compacts(mask.device) else None


def _on_some(
    x: Tensor,
    mask: Tensor,
    op: Callable[[Tensor], Tensor],
    masked_op: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``op`` on the samples where ``mask`` (n,) is true: compacted on CPU, masked elsewhere."""
    index = _selected(mask)
    if index is None:
        return masked_op(x, col(mask))
    if index.numel() > 0:
        x.index_copy_(0, index, op(x.index_select(0, index)))
    return x


def grayscale_some(x: Tensor, mask: Tensor) -> Tensor:
    """3-channel luma for the samples where ``mask``; in place, may return a new tensor."""

    def masked(y: Tensor, m: Tensor) -> Tensor:
        weight = m.reshape(-1).to(y.dtype)
        return blend_(y, 1.0 - weight, weight, None)

    return _on_some(x, mask, lambda y: luma(y).expand(-1, 3, -1, -1), masked)


def solarize_some(x: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """Inverts pixels ``>= threshold`` of the samples where ``mask``; may return a new tensor."""

    def every(y: Tensor) -> Tensor:  # in place: fewer image-sized temporaries than where()
        return y.addcmul_(_compare(torch.ge, y, threshold), 1.0 - 2.0 * y)

    def masked(y: Tensor, m: Tensor) -> Tensor:
        return torch.where((y >= threshold) & m, 1.0 - y, y)

    return _on_some(x, mask, every, masked)


def flip_some(x: Tensor, mask: Tensor) -> Tensor:
    """Mirrors left-right the samples where ``mask``; may return a new tensor."""
    return _on_some(x, mask, lambda y: y.flip(-1), lambda y, m: torch.where(m, y.flip(-1), y))


def blur_some(x: Tensor, taps: Tensor, mask: Tensor, shift: bool | None = None) -> Tensor:
    """:func:`blur_separable` on the samples where ``mask`` (taps are an impulse elsewhere)."""
    index = _selected(mask)
    if index is None:
        return blur_separable(x, taps, shift)
    if index.numel() > 0 and shift is None:
        # The CPU blur reads the chosen samples' rows in place (no gathered copy).
        x.index_copy_(0, index, gaussian_blur_bags(x, taps[index], index))
    elif index.numel() > 0:
        x.index_copy_(0, index, blur_separable(x.index_select(0, index), taps[index], shift))
    return x


def crop_resize(
    images: Tensor, index: Tensor, boxes: Tensor, size: tuple[int, int], valid: Tensor | None = None
) -> Tensor:
    """Box ``i`` of image ``index[i]`` resampled to ``size`` (see ``resized_crops``).

    Boxes at least ``ANTIALIAS_FROM`` times the output size (larger side) get roi_align's
    adaptive supersampling (``ceil(box / size)`` bilinear samples per pixel and axis, averaged);
    smaller ones plain bilinear interpolation (one sample), which is also closer to
    torchvision's antialiased bicubic there (measured MAE 1.04-1.10 vs 1.17-1.27 levels).

    On the CPU (:func:`compacts`) the same resampling runs in its separable form
    (:func:`~protohead.augment._separable_filters.crop_resize_separable`), which reads only each
    box's window, so ``images`` may also be uint8 (scaled to [0, 1]) with per-image ``valid`` sizes
    ``(b, 2)`` that clamp the taps like the image border. Elsewhere ``images`` are float and
    ``valid`` must be None (pad with :func:`~protohead.augment.image_batch.valid_region_float`).
    """
    if compacts(images.device):
        return crop_resize_separable(images, index, boxes, size, valid)
    top, left, height, width = boxes.to(images.dtype).unbind(1)
    rois = torch.stack([index.to(images.dtype), left, top, left + width, top + height], dim=1)
    plain = torch.maximum(height / size[0], width / size[1]) < ANTIALIAS_FROM
    bilinear = roi_align(images, rois, size, 1.0, 1, True)
    supersampled = roi_align(images, rois, size, 1.0, -1, True)
    out: Tensor = torch.where(col(plain), bilinear, supersampled)
    return out


def crop_chain(
    x: Tensor,
    order: Tensor,
    factors: Tensor,
    jitter_mask: Tensor,
    gray_mask: Tensor,
    sigma: Tensor,
    blur_mask: Tensor,
    solarize_mask: Tensor,
    flip_mask: Tensor,
    mean: Tensor,
    std: Tensor,
    *,
    jitter: bool,
    hue: bool,
    grayscale: bool,
    blur_size: int,
    solarize: bool,
    flip: bool,
    fused: bool,
    out_dtype: torch.dtype,
    normalize: bool = True,
) -> Tensor:
    """Colour ops, blur, solarize, flip and normalisation of ``BatchedMultiCrop``'s crops.

    Shapes: ``(n, 3, s, s)`` float in ``[0, 1]`` -> ``(n, 3, s, s)`` normalised.

    Per-sample parameters are ``(n,)`` (``order``/``factors`` ``(n, 4)``); the keyword flags
    are static, so a compiled version specialises on them. ``fused`` picks the formulation
    that ``torch.compile`` turns into a few fused kernels (masked ops, shift-and-add blur,
    out-of-place normalisation and cast); otherwise the device's eager kernels run in place.
    ``normalize=False`` returns the crops in ``[0, 1]`` for a caller that normalises them while
    writing its outputs.
    """
    if jitter:
        x = color_jitter_(x, order, factors, jitter_mask, hue)
    if grayscale:
        x = grayscale_some(x, gray_mask)
    if blur_size:
        taps = blur_taps(sigma, blur_mask, blur_size)
        x = blur_some(x, taps, blur_mask, shift=True if fused else None)
    if solarize:
        x = solarize_some(x, solarize_mask, SOLARIZE_THRESHOLD)
    if flip:
        # Every op after the crop is mirror-symmetric, so flipping last equals flipping first.
        x = flip_some(x, flip_mask)
    if not normalize:
        return x
    if fused:
        return ((x - mean) / std).to(out_dtype)
    # In place, then the caller's copy casts and lays out: a fused broadcast multiply-add into
    # a strided output is several times slower on CPU.
    return x.sub_(mean).div_(std)


@functools.cache
def fused_crop_chain() -> Callable[..., Tensor]:
    """``torch.compile`` of :func:`crop_chain`, built once per process on first use."""
    return torch.compile(crop_chain)
