"""Per-image, per-crop random parameters of the batched multi-crop augmenter (t-ReX).

:func:`sample_crop_params` draws, for ``num_crops`` crops of each of ``b`` images, everything
``MultiCropTransform`` draws for one crop (Sariyildiz et al., ICLR 2023, Sec. 3 / App. B): the
``RandomResizedCrop`` box with its 10 attempts and central fallback, the flip, whether colour
jitter applies, its op order and factors, grayscale, blur and its sigma, and solarize. Everything
is drawn with tensor ops from one ``torch.Generator`` on the images' device, with no host sync.
:func:`check_params` checks given parameters against a batch before they are rendered.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from protohead import _validation as check
from protohead.augment.image_batch import check_sizes

__all__ = [
    "CropParams",
    "MultiCropParams",
    "check_generator",
    "check_params",
    "same_device",
    "sample_crop_params",
]

_ATTEMPTS = 10  # RandomResizedCrop tries this many boxes before the central fallback


@dataclass(frozen=True)
class CropParams:
    """Random parameters of ``n`` crops of each of ``b`` images; every field is ``(n, b, ...)``.

    Attributes:
        top: Crop top row, int64 ``(n, b)``, in the valid region of the image.
        left: Crop left column, int64 ``(n, b)``.
        height: Crop height in pixels, int64 ``(n, b)``.
        width: Crop width in pixels, int64 ``(n, b)``.
        flip: Horizontal flip, bool ``(n, b)``.
        jitter: Whether ``ColorJitter`` is applied, bool ``(n, b)``.
        order: Jitter op order, int64 ``(n, b, 4)``, a permutation of 0 brightness,
            1 contrast, 2 saturation, 3 hue (torchvision's ``fn_idx``).
        brightness: Brightness factor, float32 ``(n, b)`` (1 when the strength is 0).
        contrast: Contrast factor, float32 ``(n, b)``.
        saturation: Saturation factor, float32 ``(n, b)``.
        hue: Hue shift in turns, float32 ``(n, b)`` (0 when the strength is 0).
        grayscale: Grayscale conversion, bool ``(n, b)``.
        blur: Gaussian blur, bool ``(n, b)``.
        sigma: Blur standard deviation in pixels, float32 ``(n, b)``.
        solarize: Solarize, bool ``(n, b)``.

    Example:
        >>> from protohead.augment.batched import BatchedMultiCrop
        >>> p = BatchedMultiCrop(num_local_crops=2).sample_params(torch.tensor([[64, 80]] * 3))
        >>> local = p.local_crops
        >>> local.num_crops, local.batch_size, tuple(local.order.shape), local.flat("top").shape
        (2, 3, (2, 3, 4), torch.Size([6]))
    """

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    flip: Tensor
    jitter: Tensor
    order: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    grayscale: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor

    @property
    def num_crops(self) -> int:
        """Number of crops ``n`` per image."""
        return int(self.flip.shape[0])

    @property
    def batch_size(self) -> int:
        """Number of images ``b``."""
        return int(self.flip.shape[1])

    def images(self, start: int, stop: int) -> CropParams:
        """Parameters of images ``start:stop`` only (views, nothing is copied)."""
        return CropParams(
            **{f.name: getattr(self, f.name)[:, start:stop] for f in dataclasses.fields(self)}
        )

    def flat(self, name: str) -> Tensor:
        """Field ``name`` as ``(n * b, ...)``, crop-major (crop 0 of every image first)."""
        value: Tensor = getattr(self, name)
        return value.reshape(-1, *value.shape[2:])


@dataclass(frozen=True)
class MultiCropParams:
    """Parameters of all crops of a batch: the global crops, then the local crops.

    Example:
        >>> from protohead.augment.batched import BatchedMultiCrop
        >>> p = BatchedMultiCrop().sample_params(torch.tensor([[256, 256]] * 2))
        >>> p.global_crops.num_crops, p.local_crops.num_crops
        (1, 8)
    """

    global_crops: CropParams
    local_crops: CropParams


def _uniform(lo: float, hi: float, u: Tensor) -> Tensor:
    return u.mul(hi - lo).add_(lo)


def _crop_boxes(
    sizes: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    u_scale: Tensor,
    u_ratio: Tensor,
    u_top: Tensor,
    u_left: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Vectorised ``RandomResizedCrop.make_params`` for image sizes ``(m, 2)``."""
    img_h, img_w = sizes[:, 0:1], sizes[:, 1:2]
    area = img_h * img_w
    target = area * _uniform(scale[0], scale[1], u_scale)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), u_ratio))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= img_w) & (h > 0) & (h <= img_h)
    first = ok.to(torch.int64).argmax(dim=1, keepdim=True)  # first successful attempt
    found = ok.any(dim=1, keepdim=True)
    in_ratio = img_w / img_h
    fallback_w = torch.where(in_ratio > ratio[1], torch.round(img_h * ratio[1]), img_w)
    fallback_h = torch.where(in_ratio < ratio[0], torch.round(img_w / ratio[0]), img_h)
    w = torch.where(found, w.gather(1, first), fallback_w)
    h = torch.where(found, h.gather(1, first), fallback_h)
    # floor(u * (n + 1)) is uniform on 0..n like torch.randint; the clamp only guards rounding.
    top = torch.where(found, torch.floor(u_top * (img_h - h + 1)), torch.floor((img_h - h) / 2))
    left = torch.where(found, torch.floor(u_left * (img_w - w + 1)), torch.floor((img_w - w) / 2))
    top = torch.minimum(top, img_h - h)
    left = torch.minimum(left, img_w - w)
    return tuple(t.squeeze(1).to(torch.int64) for t in (top, left, h, w))  # type: ignore[return-value]


def sample_crop_params(
    sizes: Tensor,
    num_crops: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float,
    color_jitter: tuple[float, float, float, float],
    color_jitter_p: float,
    grayscale_p: float,
    blur_p: float,
    blur_sigma: tuple[float, float],
    solarize_p: float,
    generator: torch.Generator | None = None,
) -> CropParams:
    """Draws the parameters of ``num_crops`` crops for every image, independently.

    Distributions follow ``MultiCropTransform`` op by op: the crop box as torchvision's
    ``RandomResizedCrop`` (area fraction uniform in ``scale``, log aspect ratio uniform in
    ``log(ratio)``, 10 attempts then the central fallback), Bernoulli draws with the given
    probabilities, jitter factors uniform in ``[max(0, 1 - s), 1 + s]`` (hue in ``[-s, s]``), a
    uniformly random op order, and sigma uniform in ``blur_sigma``. The number of draws does not
    depend on the data, so a seeded ``generator`` reproduces the result exactly.

    Shapes: sizes ``(b, 2)`` valid ``(h, w)`` per image -> fields ``(num_crops, b)``.

    Args:
        sizes: Integer tensor ``(b, 2)``, each >= 1, on the device to sample on. Values are
            checked when ``sizes`` is on the CPU (typically from a host-side collate such as
            :func:`~protohead.augment.image_batch.pad_images`); on an accelerator a check would
            sync, so values there are clamped to >= 1 instead.
        num_crops: Crops per image, an int >= 0.
        scale: Area fraction range ``(lo, hi)``, ``0 < lo <= hi <= 1``.
        ratio: Aspect ratio range ``(lo, hi)``, ``0 < lo <= hi``.
        flip_p: Flip probability in [0, 1].
        color_jitter: ``(brightness, contrast, saturation, hue)`` strengths.
        color_jitter_p: Probability of applying the jitter; forced to 0 when all strengths are 0.
        grayscale_p: Grayscale probability.
        blur_p: Blur probability.
        blur_sigma: Sigma range ``(lo, hi)``.
        solarize_p: Solarize probability.
        generator: Optional generator on ``sizes.device``; the device's default one if None.

    Returns:
        The :class:`CropParams`.

    Raises:
        TypeError: If ``sizes`` is not an integer tensor, ``num_crops`` not an int or
            ``generator`` not a ``torch.Generator``.
        ValueError: If ``sizes`` is not ``(b, 2)``, a size (on the CPU) is < 1,
            ``num_crops < 0`` or ``generator`` is on another device than ``sizes``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> p = sample_crop_params(torch.tensor([[32, 48]]), 3, scale=(0.5, 1.0),
        ...     ratio=(0.75, 1.33), flip_p=0.5, color_jitter=(0.4, 0.4, 0.2, 0.1),
        ...     color_jitter_p=0.8, grayscale_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0),
        ...     solarize_p=0.0, generator=g)
        >>> p.height.shape, bool((p.top + p.height <= 32).all()), bool(p.solarize.any())
        (torch.Size([3, 1]), True, False)
    """
    sizes = check_sizes(sizes, None)
    num_crops = check.integer("num_crops", num_crops, 0)
    check_generator(generator, sizes.device)
    b = sizes.shape[0]
    m = num_crops * b
    device = sizes.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=device)

    # Draw everything in one fixed order, whatever the probabilities, for reproducibility.
    u_scale, u_ratio = rand(m, _ATTEMPTS), rand(m, _ATTEMPTS)
    u_top, u_left = rand(m, 1), rand(m, 1)
    u_flip, u_jitter, u_order, u_factors = rand(m), rand(m), rand(m, 4), rand(m, 4)
    u_gray, u_blur, u_sigma, u_solarize = rand(m), rand(m), rand(m), rand(m)

    geometry = sizes.to(torch.float32).repeat(num_crops, 1)  # crop-major: crop k of image i
    top, left, height, width = _crop_boxes(geometry, scale, ratio, u_scale, u_ratio, u_top, u_left)
    jitter_p = color_jitter_p if max(color_jitter) > 0.0 else 0.0
    bright, contrast, sat, hue = color_jitter
    factors = [
        _uniform(max(0.0, 1.0 - s), 1.0 + s, u_factors[:, i])
        for i, s in enumerate((bright, contrast, sat))
    ]
    fields = {
        "top": top,
        "left": left,
        "height": height,
        "width": width,
        "flip": u_flip < flip_p,
        "jitter": u_jitter < jitter_p,
        "order": torch.argsort(u_order, dim=1),
        "brightness": factors[0],
        "contrast": factors[1],
        "saturation": factors[2],
        "hue": _uniform(-hue, hue, u_factors[:, 3]),
        "grayscale": u_gray < grayscale_p,
        "blur": u_blur < blur_p,
        "sigma": _uniform(blur_sigma[0], blur_sigma[1], u_sigma),
        "solarize": u_solarize < solarize_p,
    }
    return CropParams(**{k: v.view(num_crops, b, *v.shape[1:]) for k, v in fields.items()})


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are one device; an index-less accelerator means the current one.

    Example:
        >>> same_device(torch.device("cuda", 0), torch.device("cuda", 1))
        False
    """
    if a.type != b.type:
        return False
    if a.type == "cpu" or a.index == b.index:
        return True

    def index(d: torch.device) -> int:
        if d.index is not None:
            return d.index
        current = getattr(getattr(torch, d.type, None), "current_device", None)
        return int(current()) if callable(current) else 0

    return index(a) == index(b)


def check_generator(generator: object, device: torch.device) -> None:
    """Checks that ``generator`` is None or a ``torch.Generator`` on ``device``.

    Raises:
        TypeError: If ``generator`` is not a ``torch.Generator`` or None.
        ValueError: If it is on another device (e.g. ``cuda:1`` for ``cuda:0`` images).

    Example:
        >>> check_generator(torch.Generator().manual_seed(0), torch.device("cpu"))  # fine
        >>> check_generator(0, torch.device("cpu"))
        Traceback (most recent call last):
        ...
        TypeError: generator must be a torch.Generator or None, got 0
    """
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    if not same_device(generator.device, device):
        raise ValueError(
            f"generator must be on the images' device ({device}), got one on {generator.device}"
        )


def check_params(
    params: object, counts: tuple[int, int], batch: Tensor, sizes: Tensor | None
) -> MultiCropParams:
    """Checks that ``params`` fit a ``(b, c, h, w)`` batch with ``counts`` global/local crops.

    Field shapes and devices are always checked (host-side metadata). Where the batch is on
    the CPU, every crop box must also lie inside its image's valid region (``sizes``, checked,
    or the whole image if None) and every jitter order be a permutation of 0..3; on an
    accelerator reading them would sync the host, so they are trusted there (parameters from
    :func:`sample_crop_params` for the same sizes always fit).

    Raises:
        TypeError: If ``params`` is not a ``MultiCropParams`` of ``CropParams``.
        ValueError: If a field has the wrong shape or device, or (on the CPU) a box or order
            is invalid.

    Example:
        >>> from protohead.augment.batched import BatchedMultiCrop
        >>> p = BatchedMultiCrop().sample_params(torch.tensor([[2000, 2000]]))
        >>> small = torch.zeros(1, 3, 20, 24, dtype=torch.uint8)
        >>> check_params(p, (1, 8), small, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: params.global_crops crop 0 of image 0 has (top, left, height, width) = ...
    """
    if not isinstance(params, MultiCropParams):
        raise TypeError(f"params must be MultiCropParams, got {type(params).__name__}")
    b, device = batch.shape[0], batch.device
    for group, n in zip(("global_crops", "local_crops"), counts, strict=True):
        p = getattr(params, group)
        if not isinstance(p, CropParams):
            raise TypeError(f"params.{group} must be CropParams, got {type(p).__name__}")
        for f in dataclasses.fields(p):
            v = getattr(p, f.name)
            if not isinstance(v, Tensor) or v.shape[:2] != (n, b) or v.device != device:
                got = f"{tuple(v.shape)} on {v.device}" if isinstance(v, Tensor) else type(v)
                raise ValueError(
                    f"params must hold ({n}, {b}) crops per group on {device} for this batch, "
                    f"got params.{group}.{f.name} of shape {got}"
                )
        if device.type == "cpu":
            _check_boxes(group, p, batch, sizes)
    return params


def _check_boxes(group: str, p: CropParams, batch: Tensor, sizes: Tensor | None) -> None:
    """Host-side value checks of one group of CPU parameters (see :func:`check_params`)."""
    limit = torch.tensor(batch.shape[2:]).expand(batch.shape[0], 2) if sizes is None else sizes
    top, left, height, width = p.top, p.left, p.height, p.width
    ok = (top >= 0) & (left >= 0) & (height >= 1) & (width >= 1)
    ok &= (top + height <= limit[:, 0]) & (left + width <= limit[:, 1])
    if not bool(ok.all()):
        k, i = (~ok).nonzero()[0].tolist()
        box = [t[k, i].item() for t in (top, left, height, width)]
        raise ValueError(
            f"params.{group} crop {k} of image {i} has (top, left, height, width) = {box}, "
            f"which must lie inside the image's valid region {limit[i].tolist()} (h, w); "
            "were the params sampled for other image sizes?"
        )
    order = p.order
    if order.shape[2:] != (4,) or not bool((order.sort(dim=-1).values == torch.arange(4)).all()):
        raise ValueError(
            f"params.{group}.order must hold permutations of 0..3 (shape (n, b, 4)), "
            f"got shape {tuple(order.shape)}"
        )
