"""Per-sample image ops on a batch, for the batched multi-crop augmenter of t-ReX.

Every op takes float images ``(n, c, h, w)`` in ``[0, 1]`` and one parameter per sample, and
reproduces the float formula of the matching ``torchvision.transforms.v2.functional`` op
(``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``,
``rgb_to_grayscale``, ``gaussian_blur``, ``solarize``, ``horizontal_flip``) sample by sample
with broadcast arithmetic, so the whole batch costs a few kernels instead of ``n`` Python calls.
:func:`resized_crops` crops and resizes all samples at once (``roi_align``'s resampling).

These are the checked, copying front-ends of the kernels (:mod:`protohead.augment.kernels`) of
:class:`protohead.augment.batched.BatchedMultiCrop` (Sariyildiz et al., ICLR 2023, multi-crop
augmentation of Sec. 3 / App. B, drawn per image rather than per batch). None of them modifies
its input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from protohead.augment._color import col
from protohead.augment.kernels import (
    blend_,
    blur_separable,
    blur_taps,
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


def _check_tensor(name: str, value: object, shape: tuple[int, ...], want: str) -> Tensor:
    """``value`` as a tensor of ``shape`` (``-1``: any size) with a ``want`` dtype."""
    dims = ", ".join("n" if d < 0 else str(d) for d in shape)
    shown = f"({dims},)" if len(shape) == 1 else f"({dims})"
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {shown}, got {type(value).__name__}")
    if value.ndim != len(shape) or any(
        d >= 0 and d != v for d, v in zip(shape, value.shape, strict=True)
    ):
        raise ValueError(f"{name} must be a tensor of shape {shown}, got {tuple(value.shape)}")
    kind = value.dtype
    ok = {
        "bool": kind == torch.bool,
        "integer": not (kind.is_floating_point or kind.is_complex or kind == torch.bool),
        "real": not (kind.is_complex or kind == torch.bool),
    }[want]
    if not ok:
        article = "an" if want == "integer" else "a"
        raise TypeError(f"{name} must have {article} {want} dtype, got {kind}")
    return value


def _per_sample(name: str, value: object, x: Tensor, mask: bool = False) -> Tensor:
    """A ``(n,)`` parameter on ``x``'s device: a bool mask, or real values in ``x``'s dtype."""
    v = _check_tensor(name, value, x.shape[:1], "bool" if mask else "real")
    return v.to(x.device) if mask else v.to(device=x.device, dtype=x.dtype)


def _first_bad(bad: Tensor) -> int | None:
    """Index of the first true entry of a CPU ``(n,)`` mask, None if there is none."""
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def _check_size(size: object) -> tuple[int, int]:
    pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in pair):
        raise TypeError(f"size must be an int or a pair of ints (h, w), got {size!r}")
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be an int or (h, w) pair >= 1, got {size!r}")
    return int(pair[0]), int(pair[1])


def _check_crops(images: Tensor, index: Tensor, boxes: Tensor) -> None:
    """Value checks of :func:`resized_crops` for the arguments on the CPU (host reads)."""
    b, h, w = images.shape[0], images.shape[2], images.shape[3]
    if index.device.type == "cpu":
        i = _first_bad((index < 0) | (index >= b))
        if i is not None:
            raise ValueError(f"index must lie in [0, {b}), got index[{i}] = {int(index[i])}")
    if boxes.device.type == "cpu":
        top, left, height, width = boxes.to(torch.float64).unbind(1)
        ok = boxes.isfinite().all(1) & (height > 0) & (width > 0) & (top >= 0) & (left >= 0)
        i = _first_bad(~(ok & (top + height <= h) & (left + width <= w)))
        if i is not None:
            raise ValueError(
                "boxes must be finite (top, left, height, width) with height, width > 0 inside "
                f"the {h}x{w} images, got boxes[{i}] = {boxes[i].tolist()}"
            )


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
    edge row/column is repeated at the border. On the CPU the same resampling runs in its
    separable form, equal up to float rounding and reading only each box's rows and columns.

    Shapes: images ``(b, c, h, w)`` float, index ``(n,)`` int in ``[0, b)``, boxes ``(n, 4)``
    as ``(top, left, height, width)`` in pixels, finite, with ``height, width > 0`` and inside
    the image (``top, left >= 0``, ``top + height <= h``, ``left + width <= w``) ->
    ``(n, c, size_h, size_w)`` in the images' dtype (half-precision images are resampled in
    float32). ``index`` and ``boxes`` may live on the CPU or the images' device.

    Values are checked where they are on the CPU (host-side parameters, the usual case); on an
    accelerator a check would stall the host, so values there are trusted: an index out of
    range reads out of bounds (the batched ``BatchedMultiCrop`` builds valid ones itself).

    Raises:
        TypeError: If ``images`` is not a floating point tensor, ``index``/``boxes`` not an
            integer/real tensor, or ``size`` not an int or a pair of ints.
        ValueError: If a shape is wrong, ``size`` is not positive or, on the CPU, an index is
            out of range or a box is not finite, empty or outside the image.

    Example:
        >>> img = torch.arange(16.0).view(1, 1, 4, 4)
        >>> resized_crops(img, torch.tensor([0]), torch.tensor([[0, 2, 2, 2]]), 2)
        tensor([[[[2., 3.],
                  [6., 7.]]]])
    """
    _check_images(images, rgb=False)
    boxes = _check_tensor("boxes", boxes, (-1, 4), "real")
    index = _check_tensor("index", index, boxes.shape[:1], "integer")
    out_hw = _check_size(size)
    _check_crops(images, index, boxes)
    # roi_align has no CPU bfloat16 kernel, and half-precision box coordinates would be coarse.
    exact = images.dtype in (torch.float32, torch.float64)
    work = images if exact else images.to(torch.float32)
    out = crop_resize(work, index.to(images.device), boxes.to(images.device), out_hw)
    return out if exact else out.to(images.dtype)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(factor * x, 0, 1)`` per sample, as torchvision's ``adjust_brightness``.

    Shapes: ``(n, 3, h, w), (n,) -> (n, 3, h, w)``; ``factor >= 0``.

    Raises:
        TypeError: If ``x`` is not floating point or ``factor`` not a real tensor.
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
        TypeError: If ``x`` is not floating point or ``factor`` not a real tensor.
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
        TypeError: If ``x`` is not floating point or ``factor`` not a real tensor.
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
        TypeError: If ``x`` is not floating point or ``apply`` not a bool tensor.
        ValueError: If ``x`` is not ``(n, 3, h, w)`` or ``apply`` is not ``(n,)``.

    Example:
        >>> x = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
        >>> grayscale(x, torch.tensor([True])).flatten()
        tensor([0.5870, 0.5870, 0.5870])
    """
    g = _per_sample("apply", apply, _check_images(x), mask=True).to(x.dtype)
    return blend_(x.clone(), 1.0 - g, g, None)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """Rotates the HSV hue by ``factor`` turns per sample, as torchvision's ``adjust_hue``.

    Shapes: ``(n, 3, h, w), (n,) -> (n, 3, h, w)``; ``factor`` in ``[-0.5, 0.5]``.

    Raises:
        TypeError: If ``x`` is not floating point or ``factor`` not a real tensor.
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

    Shapes: ``(n, 3, h, w), (n, 4) int, (n, 4) -> (n, 3, h, w)``. ``order`` and ``factors``
    may live on the CPU or ``x``'s device; the rows of ``order`` are checked to be permutations
    where it is on the CPU (on an accelerator the check would stall the host, so rows there are
    trusted).

    Raises:
        TypeError: If ``x`` is not floating point, ``order`` not an integer tensor or
            ``factors`` not a real one.
        ValueError: If ``x`` is not ``(n, 3, h, w)``, ``order``/``factors`` are not ``(n, 4)``
            or (on the CPU) a row of ``order`` is not a permutation of 0..3.

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> order, factors = torch.tensor([[0, 1, 2, 3]] * 2), torch.tensor([[1.0, 1, 1, 0]] * 2)
        >>> torch.allclose(color_jitter(x, order, factors), x, atol=1e-6)
        True
    """
    n = _check_images(x).shape[0]
    order = _check_tensor("order", order, (n, 4), "integer")
    factors = _check_tensor("factors", factors, (n, 4), "real")
    if order.device.type == "cpu":
        i = _first_bad((order.sort(dim=1).values != torch.arange(4)).any(dim=1))
        if i is not None:
            raise ValueError(
                f"order rows must be permutations of 0..3, got order[{i}] = {order[i].tolist()}"
            )
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
        TypeError: If ``x`` is not floating point, ``sigma`` not a real tensor, ``apply`` not
            a bool one or ``kernel_size`` not an int.
        ValueError: On a bad shape or kernel size.

    Example:
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> round(gaussian_blur(x, torch.tensor([1.0]), 3).sum().item(), 4)
        1.0
    """
    _check_images(x, rgb=False)
    s = _per_sample("sigma", sigma, x)
    mask = torch.ones_like(s, dtype=torch.bool) if apply is None else apply
    mask = _per_sample("apply", mask, x, mask=True)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"kernel_size must be an int, got {kernel_size!r}")
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
        TypeError: If ``x`` is not floating point or ``apply`` not a bool tensor.
        ValueError: If ``apply`` is not ``(n,)``.

    Example:
        >>> solarize(torch.tensor([0.2, 0.9]).view(1, 1, 1, 2), torch.tensor([True])).flatten()
        tensor([0.2000, 0.1000])
    """
    mask = col(_per_sample("apply", apply, _check_images(x, rgb=False), mask=True))
    return torch.where((x >= threshold) & mask, 1.0 - x, x)


def horizontal_flip(x: Tensor, apply: Tensor) -> Tensor:
    """Mirrors left-right the samples where ``apply`` is true.

    Shapes: ``(n, c, h, w), (n,) bool -> (n, c, h, w)``.

    Raises:
        TypeError: If ``x`` is not floating point or ``apply`` not a bool tensor.
        ValueError: If ``apply`` is not ``(n,)``.

    Example:
        >>> horizontal_flip(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([True]))
        tensor([[[[2., 1.]]]])
    """
    mask = _per_sample("apply", apply, _check_images(x, rgb=False), mask=True)
    return torch.where(col(mask), x.flip(-1), x)
