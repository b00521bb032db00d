"""Multi-crop augmentation of t-ReX (Sariyildiz et al., ICLR 2023, Sec. 3), collate and eval.

t-ReX classifies several DINO-style views of every image: a few large "global" crops and
several small "local" crops. PIL inputs stay on PIL's (faster on CPU) path throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from protohead import _validation as check
from protohead.augment._pil_views import PILViewChain
from protohead.augment.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropConfig,
    check_interpolation,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropTransform",
    "eval_transform",
]

_SOLARIZE_THRESHOLD: Final = 128
_ImageLike = Image.Image | torch.Tensor


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[Callable[[Any], Any]]:
    """Final steps of every pipeline: uint8 -> float32 in [0, 1] -> Normalize -> plain tensor."""
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
        v2.ToPureTensor(),
    ]


def _to_rgb(image: object) -> _ImageLike:
    """Checks ``image`` and returns it as an RGB PIL image or a ``(3, h, w)`` uint8 tensor."""
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image must be at least 1x1 pixels, got size {image.size}")
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # PIL warns when dropping palette transparency
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"image tensor must have dtype torch.uint8, got {image.dtype}")
        if image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
            raise ValueError(
                f"image tensor must have shape (c, h, w), c in {{1, 3}}, "
                f"h, w >= 1, got {tuple(image.shape)}"
            )
        # Plain tensor so v2 treats it as the image even if a tv_tensor subclass came in.
        plain = image.as_subclass(torch.Tensor)
        return plain.expand(3, -1, -1).contiguous() if plain.shape[0] == 1 else plain
    raise TypeError(
        f"image must be a PIL.Image.Image or a uint8 torch.Tensor, got {type(image).__name__}"
    )


class _RandomGaussianBlur:
    """Gaussian blur applied with probability ``p``, sigma drawn uniformly from ``sigma``.

    On PIL images this uses ``ImageFilter.GaussianBlur(radius=sigma)`` (PIL's radius is the
    standard deviation); on tensors an odd kernel covering ±3 ``sigma[1]``, shrunk when the image
    is too small for reflect padding.
    """

    def __init__(self, p: float, sigma: tuple[float, float]) -> None:
        self.p = p
        self.sigma = sigma
        self.kernel_size = 2 * math.ceil(3.0 * sigma[1]) + 1

    def __call__(self, image: _ImageLike) -> _ImageLike:
        # Draws come from torch's CPU generator, so seeding torch reproduces every crop; this
        # reads a CPU scalar, not a device tensor, so no accelerator sync happens here.
        if float(torch.rand(())) >= self.p:
            return image
        lo, hi = self.sigma
        sigma = lo + (hi - lo) * float(torch.rand(()))
        if isinstance(image, Image.Image):
            return image.filter(ImageFilter.GaussianBlur(radius=sigma))
        k = min(self.kernel_size, 2 * min(image.shape[-2:]) - 1)
        out: torch.Tensor = F.gaussian_blur(image, [k, k], [sigma, sigma])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, sigma={self.sigma})"


class MultiCropTransform:
    """DINO-style multi-crop augmentation used by t-ReX / t-ReX* (Sariyildiz et al., ICLR 2023).

    For each crop kind (global, local) the views are built by, in order:
    ``RandomResizedCrop(size, scale, ratio, interpolation, antialias=True)`` -> horizontal flip
    (``flip_p``) -> ``ColorJitter(*color_jitter)`` with probability ``color_jitter_p`` ->
    grayscale with 3 output channels (``grayscale_p``) -> Gaussian blur with probability
    ``global_blur_p`` / ``local_blur_p`` and sigma uniform in ``blur_sigma`` -> solarize at 128
    (uint8 scale) with probability ``global_solarize_p`` / ``local_solarize_p`` -> float32 in
    [0, 1] -> ``Normalize(mean, std)``. An op whose probability is 0 is left out entirely, so
    a no-augmentation baseline is built by passing zeros.

    Input: a PIL image of any mode (converted to RGB) or a uint8 tensor ``(c, h, w)`` with ``c``
    in {1, 3} (1 channel is repeated). Output: a list of ``num_crops`` float32 tensors
    ``(3, h, w)``, all global crops first, then the local crops. The input is never modified.
    Randomness comes from torch's global generator (seed it with ``torch.manual_seed``).

    The settings come from a :class:`~protohead.augment.config.MultiCropConfig` (its fields are
    the keyword arguments, with the same names, defaults and ranges) and each reads through as
    an attribute of the same name, e.g. ``transform.global_crop_size``. The instance is
    immutable: build a new one to change settings.

    Args:
        config: The settings; ``None`` uses :class:`~protohead.augment.config.MultiCropConfig`'s
            defaults.
        **settings: Settings to change, by their ``MultiCropConfig`` names (e.g.
            ``num_local_crops=2``).

    Raises:
        TypeError: If a setting is unknown or has the wrong type, or ``image`` is not a PIL
            image or a uint8 tensor (raised by ``__call__``).
        ValueError: If an argument is out of range, or ``image`` has a bad shape.

    Example:
        >>> t = MultiCropTransform(num_global_crops=2, num_local_crops=3,
        ...                        global_crop_size=32, local_crop_size=16)
        >>> crops = t(torch.randint(0, 256, (1, 40, 48), dtype=torch.uint8))
        >>> [tuple(c.shape) for c in crops], crops[0].dtype, t.num_crops
        ([(3, 32, 32), (3, 32, 32), (3, 16, 16), (3, 16, 16), (3, 16, 16)], torch.float32, 5)
    """

    _frozen: bool = False

    def __init__(self, config: MultiCropConfig | None = None, /, **settings: Any) -> None:
        # An exception here discards the half-built object, so nobody can observe it.
        self.config = MultiCropConfig.resolve(config, settings)
        self._global = self._pipeline("global")
        self._local = self._pipeline("local")
        # The same chains for PIL images, without v2's per-op dispatch.
        self._global_pil = PILViewChain.of(self, "global", _SOLARIZE_THRESHOLD)
        self._local_pil = PILViewChain.of(self, "local", _SOLARIZE_THRESHOLD)
        self._frozen = True

    def __getattr__(self, name: str) -> Any:
        # Each setting reads through from the config, e.g. ``transform.global_crop_size``.
        if name != "config" and name in MultiCropConfig.field_names():
            return getattr(self.config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _pipeline(self, kind: str) -> Any:
        size, scale = getattr(self, f"{kind}_crop_size"), getattr(self, f"{kind}_crop_scale")
        blur_p, solarize_p = getattr(self, f"{kind}_blur_p"), getattr(self, f"{kind}_solarize_p")
        ops: list[Callable[[Any], Any]] = [
            v2.RandomResizedCrop(
                size, scale, self.ratio, interpolation=self.interpolation, antialias=True
            )
        ]
        if self.flip_p > 0.0:
            ops.append(v2.RandomHorizontalFlip(p=self.flip_p))
        if self.color_jitter_p > 0.0 and max(self.color_jitter) > 0.0:
            jitter = v2.ColorJitter(*self.color_jitter)
            ops.append(v2.RandomApply([jitter], p=self.color_jitter_p))
        if self.grayscale_p > 0.0:
            ops.append(v2.RandomGrayscale(p=self.grayscale_p))
        if blur_p > 0.0:
            ops.append(_RandomGaussianBlur(blur_p, self.blur_sigma))
        if solarize_p > 0.0:
            ops.append(v2.RandomSolarize(threshold=_SOLARIZE_THRESHOLD, p=solarize_p))
        return v2.Compose(ops + _to_float(self.mean, self.std))

    @property
    def num_crops(self) -> int:
        """Total number of crops per image: ``num_global_crops + num_local_crops``."""
        return self.config.num_crops

    def __call__(self, image: Image.Image | torch.Tensor) -> list[torch.Tensor]:
        """Returns ``num_crops`` views of ``image``, ``(c, h, w) -> [(3, s, s)] * num_crops``."""
        rgb = _to_rgb(image)
        # PIL images take the direct PIL chains (same draws and pixels as the v2 pipelines).
        first: Callable[[Any], torch.Tensor] = self._global
        rest: Callable[[Any], torch.Tensor] = self._local
        if isinstance(rgb, Image.Image):
            first, rest = self._global_pil, self._local_pil
        crops = [first(rgb) for _ in range(self.num_global_crops)]
        crops += [rest(rgb) for _ in range(self.num_local_crops)]
        return crops

    def __setattr__(self, name: str, value: object) -> None:
        if self._frozen:
            raise AttributeError(
                f"MultiCropTransform is immutable (cannot set {name!r}); build a new one instead"
            )
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class _EvalTransform:
    """Picklable evaluation pipeline returned by :func:`eval_transform`."""

    def __init__(self, steps: Any, description: str) -> None:
        self._steps = steps
        self._description = description

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._steps(_to_rgb(image))
        return out

    def __repr__(self) -> str:
        return self._description


def eval_transform(
    crop_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
    """Standard evaluation transform: resize the short side, center crop, normalise.

    ``Resize(resize_size) -> CenterCrop(crop_size) -> float32 in [0, 1] -> Normalize``, shapes
    ``(c, h, w) -> (3, crop_size, crop_size)``. Accepts the same inputs as
    :class:`MultiCropTransform` (PIL image of any mode, or uint8 ``(c, h, w)`` with c in {1, 3}).

    Args:
        crop_size: Side of the square output, >= 1.
        resize_size: Target short side, >= ``crop_size``; ``None`` gives
            ``round(crop_size * 256 / 224)`` (224 -> 256).
        mean: Per-channel normalisation mean, 3 finite numbers.
        std: Per-channel normalisation std, 3 numbers > 0.
        interpolation: Resize interpolation; NEAREST, NEAREST_EXACT, BILINEAR or BICUBIC.

    Returns:
        A picklable callable ``image -> (3, crop_size, crop_size)`` float32 tensor.

    Raises:
        TypeError: If an argument has the wrong type (or, when called, ``image`` does).
        ValueError: If an argument is out of range (or, when called, ``image`` has a bad shape).

    Example:
        >>> t = eval_transform(28)  # resizes the short side to 32 first
        >>> t(torch.zeros(1, 30, 40, dtype=torch.uint8)).shape
        torch.Size([3, 28, 28])
    """
    crop = check.integer("crop_size", crop_size, 1)
    resize = round(crop * 256 / 224) if resize_size is None else resize_size
    resize = check.integer("resize_size", resize, crop)
    m, s = check.mean_std(mean, std)
    mode = check_interpolation(interpolation)
    steps = [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(crop)]
    steps += _to_float(m, s)
    description = (
        f"eval_transform(crop_size={crop}, resize_size={resize}, mean={m}, std={s}, "
        f"interpolation={mode!r})"
    )
    return _EvalTransform(v2.Compose(steps), description)
