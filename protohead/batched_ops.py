"""Per-sample image ops on a batch, for the batched multi-crop augmenter of t-ReX.

Every op takes float images ``(n, c, h, w)`` in ``[0, 1]`` and one parameter per sample, and
reproduces the float formula of the matching ``torchvision.transforms.v2.functional`` op
(``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``,
``rgb_to_grayscale``, ``gaussian_blur``, ``solarize``, ``horizontal_flip``) sample by sample
with broadcast arithmetic, so the whole batch costs a few kernels instead of ``n`` Python calls.
:func:`resized_crops` crops and resizes all samples at once (``roi_align``'s resampling).

These are the checked, copying front-ends of the kernels (:mod:`protohead.batched_kernels`) of
:class:`protohead.gpu_multicrop.GPUMultiCrop` (Sariyildiz et al., ICLR 2023, multi-crop
augmentation of Sec. 3 / App. B, drawn per image rather than per batch). None of them modifies
its input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from protohead.batched_kernels import (
    blend_,
    blur_separable,
    blur_taps,
    col,
    color_jitter_,
    crop_resize,
    hue_rotate,
)

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "gaussian_blur",
    "grayscale",
    "horizontal_flip",
    "resized_crops",
    "solarize",
]


def _check_images(x: object, rgb: bool = True) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"images must be a floating point tensor, got {got}")
    if x.ndim != 4 or (rgb and x.shape[1] != 3):
        want = "(n, 3, h, w)" if rgb else "(n, c, h, w)"
        raise ValueError(f"images must have shape {want}, got {tuple(x.shape)}")
    return x


def _per_sample(name: str, value: object, x: Tensor) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != x.shape[:1]:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor of shape ({x.shape[0]},), got {got}")
    return value.to(device=x.device, dtype=x.dtype if value.is_floating_point() else value.dtype)


def resized_crops(
    images: Tensor, index: Tensor, boxes: Tensor, size: tuple[int, int] | int
) -> Tensor:
    """Crops box ``i`` of image ``index[i]`` and resizes it, for all boxes in one op.

    Resampling is ``torchvision.ops.roi_align`` (``aligned=True``): bilinear interpolation
    while the box is less than 1.5x the output size (larger side), and from 1.5x on its
    adaptive antialias, each output pixel averaging ``ceil(box / size)`` bilinear samples per
    axis spread over its footprint (a box filter). It stands in for torchvision's antialiased
    bicubic ``resized_crop``: mean absolute difference about 1 level on 0-255 textured images
    (1.0-1.1 for t-ReX crops of 256 px images, 0.7 of 512 px ones; supersampling below 1.5x
    would only move it further away, to 1.2-1.3). Samples never leave the box's image; its
    edge row/column is repeated at the border.

    Shapes: images ``(b, c, h, w)`` float, index ``(n,)`` int in ``[0, b)``, boxes ``(n, 4)``
    as ``(top, left, height, width)`` in pixels -> ``(n, c, size_h, size_w)``.

    Raises:
        TypeError: If ``images`` is not a floating point tensor.
        ValueError: If a shape is wrong or ``size`` is not positive.

    Example:
        >>> img = torch.arange(16.0).view(1, 1, 4, 4)
        >>> resized_crops(img, torch.tensor([0]), torch.tensor([[0, 2, 2, 2]]), 2)
        tensor([[[[2., 3.],
                  [6., 7.]]]])
    """
    _check_images(images, rgb=False)
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a tensor of shape (n, 4), got {got}")
    if not isinstance(index, Tensor) or index.shape != boxes.shape[:1]:
        got = tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"index must be a tensor of shape ({boxes.shape[0]},), got {got}")
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ValueError(f"size must be an int or (h, w) pair >= 1, got {size!r}")
    return crop_resize(images, index, boxes, (int(out_hw[0]), int(out_hw[1])))


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(factor * x, 0, 1)`` per sample, as torchvision's ``adjust_brightness``.

    Shapes: ``(n, 3, h, w), (n,) -> (n, 3, h, w)``; ``factor >= 0``.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``x`` is not ``(n, 3, h, w)`` or ``factor`` is not ``(n,)``.

    Example:
        >>> adjust_brightness(torch.full((1, 3, 1, 1), 0.6), torch.tensor([2.0])).flatten()
        tensor([1., 1., 1.])
    """
    f = _per_sample("factor", factor, _check_images(x))
    zero = torch.zeros_like(f)
    return blend_(x.clone(), f, zero, None)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the mean grey level per sample, as torchvision's ``adjust_contrast``.

    Shapes: ``(n, 3, h, w), (n,) -> (n, 3, h, w)``; ``factor >= 0``.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``x`` is not ``(n, 3, h, w)`` or ``factor`` is not ``(n,)``.

    Example:
        >>> x = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
        >>> adjust_contrast(x, torch.tensor([0.0]))[0, 0]
        tensor([[0.4000, 0.4000]])
    """
    f = _per_sample("factor", factor, _check_images(x))
    return blend_(x.clone(), f, torch.zeros_like(f), 1.0 - f)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-pixel grey image, as torchvision's ``adjust_saturation``.

    Shapes: ``(n, 3, h, w), (n,) -> (n, 3, h, w)``; ``factor >= 0`` (0 gives grayscale).

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``x`` is not ``(n, 3, h, w)`` or ``factor`` is not ``(n,)``.

    Example:
        >>> x = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        >>> adjust_saturation(x, torch.tensor([0.0])).flatten()
        tensor([0.2989, 0.2989, 0.2989])
    """
    f = _per_sample("factor", factor, _check_images(x))
    return blend_(x.clone(), f, 1.0 - f, None)


def grayscale(x: Tensor, apply: Tensor) -> Tensor:
    """Replaces the samples where ``apply`` is true by their 3-channel luma image.

    Matches torchvision's ``rgb_to_grayscale(x, num_output_channels=3)`` on those samples.
    Shapes: ``(n, 3, h, w), (n,) bool -> (n, 3, h, w)``.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``x`` is not ``(n, 3, h, w)`` or ``apply`` is not ``(n,)``.

    Example:
        >>> x = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
        >>> grayscale(x, torch.tensor([True])).flatten()
        tensor([0.5870, 0.5870, 0.5870])
    """
    g = _per_sample("apply", apply, _check_images(x)).to(x.dtype)
    return blend_(x.clone(), 1.0 - g, g, None)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Rotates the HSV hue by ``factor`` turns per sample, as torchvision's ``adjust_hue``.

    Shapes: ``(n, 3, h, w), (n,) -> (n, 3, h, w)``; ``factor`` in ``[-0.5, 0.5]``.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``x`` is not ``(n, 3, h, w)`` or ``factor`` is not ``(n,)``.

    Example:
        >>> x = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        >>> adjust_hue(x, torch.tensor([1 / 3])).flatten()  # red -> green
        tensor([0., 1., 0.])
    """
    return hue_rotate(_check_images(x), _per_sample("factor", factor, x))


def color_jitter(x: Tensor, order: Tensor, factors: Tensor) -> Tensor:
    """Per-sample ``ColorJitter``: ops 0 brightness, 1 contrast, 2 saturation, 3 hue.

    Sample ``i`` applies the four ops in the order ``order[i]`` (a permutation of 0..3, as
    torchvision's ``fn_idx``) with factors ``factors[i] = (brightness, contrast, saturation,
    hue)``; ``(1, 1, 1, 0)`` leaves a sample unchanged.

    Shapes: ``(n, 3, h, w), (n, 4) int, (n, 4) -> (n, 3, h, w)``.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``x`` is not ``(n, 3, h, w)`` or ``order``/``factors`` are not ``(n, 4)``.

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> order, factors = torch.tensor([[0, 1, 2, 3]] * 2), torch.tensor([[1.0, 1, 1, 0]] * 2)
        >>> torch.allclose(color_jitter(x, order, factors), x, atol=1e-6)
        True
    """
    _check_images(x)
    for name, t in (("order", order), ("factors", factors)):
        if not isinstance(t, Tensor) or t.shape != (x.shape[0], 4):
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape ({x.shape[0]}, 4), got {got}")
    apply = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return color_jitter_(x.clone(), order.to(x.device), factors.to(x), apply)


def gaussian_blur(
    x: Tensor, sigma: Tensor, kernel_size: int, apply: Tensor | None = None
) -> Tensor:
    """Per-sample Gaussian blur, as torchvision's ``gaussian_blur(x, [k, k], [s, s])``.

    Separable, ``kernel_size`` taps, reflect padding; samples where ``apply`` is false are
    returned unchanged. Shapes: ``(n, c, h, w), (n,) -> (n, c, h, w)``.

    Args:
        x: Images ``(n, c, h, w)``.
        sigma: Per-sample standard deviation ``(n,)``, > 0 where applied.
        kernel_size: Odd number of taps, ``1 <= kernel_size < 2 * min(h, w)``.
        apply: Optional ``(n,)`` bool mask; ``None`` blurs every sample.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: On a bad shape or kernel size.

    Example:
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> round(gaussian_blur(x, torch.tensor([1.0]), 3).sum().item(), 4)
        1.0
    """
    _check_images(x, rgb=False)
    s = _per_sample("sigma", sigma, x)
    mask = torch.ones_like(s, dtype=torch.bool) if apply is None else apply
    mask = _per_sample("apply", mask, x).to(torch.bool)
    if kernel_size < 1 or kernel_size % 2 == 0 or kernel_size >= 2 * min(x.shape[2:]):
        raise ValueError(
            f"kernel_size must be odd, >= 1 and < 2 * min(h, w) = {2 * min(x.shape[2:])}, "
            f"got {kernel_size}"
        )
    return blur_separable(x, blur_taps(s.clamp_min(1e-6), mask, kernel_size))


def solarize(x: Tensor, apply: Tensor, threshold: float = 128 / 255) -> Tensor:
    """Inverts pixels ``>= threshold`` of the samples where ``apply`` is true (``solarize``).

    Shapes: ``(n, c, h, w), (n,) bool -> (n, c, h, w)``. The default threshold is 128 on the
    uint8 scale, as ``MultiCropTransform``.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``apply`` is not ``(n,)``.

    Example:
        >>> solarize(torch.tensor([0.2, 0.9]).view(1, 1, 1, 2), torch.tensor([True])).flatten()
        tensor([0.2000, 0.1000])
    """
    mask = col(_per_sample("apply", apply, _check_images(x, rgb=False)).to(torch.bool))
    return torch.where((x >= threshold) & mask, 1.0 - x, x)


def horizontal_flip(x: Tensor, apply: Tensor) -> Tensor:
    """Mirrors left-right the samples where ``apply`` is true.

    Shapes: ``(n, c, h, w), (n,) bool -> (n, c, h, w)``.

    Raises:
        TypeError: If ``x`` is not floating point.
        ValueError: If ``apply`` is not ``(n,)``.

    Example:
        >>> horizontal_flip(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([True]))
        tensor([[[[2., 1.]]]])
    """
    mask = _per_sample("apply", apply, _check_images(x, rgb=False)).to(torch.bool)
    return torch.where(col(mask), x.flip(-1), x)
