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

from protohead import _transform_checks as check
from protohead._pil_views import PILViewChain
from protohead.collate_checks import check_batch, label_tensor, sample_pair

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropTransform",
    "eval_transform",
    "multicrop_collate",
]

IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)

# Modes every op supports on both the PIL and the tensor path (BOX/HAMMING/LANCZOS are PIL-only).
_INTERPOLATIONS: Final = (
    InterpolationMode.NEAREST,
    InterpolationMode.NEAREST_EXACT,
    InterpolationMode.BILINEAR,
    InterpolationMode.BICUBIC,
)
_SOLARIZE_THRESHOLD: Final = 128
_ImageLike = Image.Image | torch.Tensor


def _interpolation(value: object) -> InterpolationMode:
    allowed = ", ".join(m.name for m in _INTERPOLATIONS)
    message = f"interpolation must be an InterpolationMode in {{{allowed}}}, got {value!r}"
    if not isinstance(value, InterpolationMode):
        raise TypeError(message)
    if value not in _INTERPOLATIONS:
        raise ValueError(message)
    return value


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

    Every constructor argument is kept as a read-only attribute of the same name (e.g. for a
    batched GPU augmenter); the instance is immutable, build a new one to change settings.

    Args:
        num_global_crops: Number of global crops, >= 1.
        num_local_crops: Number of local crops, >= 0.
        global_crop_size: Side of the square global crops, >= 1.
        local_crop_size: Side of the square local crops, >= 1.
        global_crop_scale: Area fraction range of global crops, 0 < lo <= hi <= 1.
        local_crop_scale: Area fraction range of local crops, 0 < lo <= hi <= 1.
        ratio: Aspect ratio range of the crops, 0 < lo <= hi.
        mean: Per-channel normalisation mean, 3 finite numbers.
        std: Per-channel normalisation std, 3 numbers > 0.
        flip_p: Horizontal flip probability in [0, 1].
        color_jitter: ``(brightness, contrast, saturation, hue)`` strengths; the first three
            >= 0, hue in [0, 0.5].
        color_jitter_p: Probability of applying the colour jitter, in [0, 1].
        grayscale_p: Probability of converting to grayscale, in [0, 1].
        global_blur_p: Blur probability for global crops, in [0, 1].
        local_blur_p: Blur probability for local crops, in [0, 1].
        blur_sigma: Blur sigma range, 0 < lo <= hi.
        global_solarize_p: Solarize probability for global crops, in [0, 1].
        local_solarize_p: Solarize probability for local crops, in [0, 1].
        interpolation: Resize interpolation; NEAREST, NEAREST_EXACT, BILINEAR or BICUBIC.

    Raises:
        TypeError: If an argument has the wrong type, or ``image`` is not a PIL image or a
            uint8 tensor (raised by ``__call__``).
        ValueError: If an argument is out of range, or ``image`` has a bad shape.

    Example:
        >>> t = MultiCropTransform(num_global_crops=2, num_local_crops=3,
        ...                        global_crop_size=32, local_crop_size=16)
        >>> crops = t(torch.randint(0, 256, (1, 40, 48), dtype=torch.uint8))
        >>> [tuple(c.shape) for c in crops], crops[0].dtype, t.num_crops
        ([(3, 32, 32), (3, 32, 32), (3, 16, 16), (3, 16, 16), (3, 16, 16)], torch.float32, 5)
    """

    _frozen: bool = False

    def __init__(
        self,
        *,
        num_global_crops: int = 1,
        num_local_crops: int = 8,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
        global_crop_scale: tuple[float, float] = (0.25, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.25),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip_p: float = 0.5,
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        global_blur_p: float = 0.2,
        local_blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        global_solarize_p: float = 0.2,
        local_solarize_p: float = 0.0,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    ) -> None:
        # An exception here discards the half-built object, so nobody can observe it.
        self.num_global_crops = check.integer("num_global_crops", num_global_crops, 1)
        self.num_local_crops = check.integer("num_local_crops", num_local_crops, 0)
        self.global_crop_size = check.integer("global_crop_size", global_crop_size, 1)
        self.local_crop_size = check.integer("local_crop_size", local_crop_size, 1)
        self.global_crop_scale = check.interval("global_crop_scale", global_crop_scale, 1.0)
        self.local_crop_scale = check.interval("local_crop_scale", local_crop_scale, 1.0)
        self.ratio = check.interval("ratio", ratio, None)
        self.mean, self.std = check.mean_std(mean, std)
        self.flip_p = check.probability("flip_p", flip_p)
        self.color_jitter = check.reals("color_jitter", color_jitter, 4)
        if min(self.color_jitter[:3]) < 0.0 or not 0.0 <= self.color_jitter[3] <= 0.5:
            raise ValueError(
                "color_jitter must be (brightness, contrast, saturation, hue) with the first "
                f"three >= 0 and hue in [0, 0.5], got {self.color_jitter}"
            )
        self.color_jitter_p = check.probability("color_jitter_p", color_jitter_p)
        self.grayscale_p = check.probability("grayscale_p", grayscale_p)
        self.global_blur_p = check.probability("global_blur_p", global_blur_p)
        self.local_blur_p = check.probability("local_blur_p", local_blur_p)
        self.blur_sigma = check.interval("blur_sigma", blur_sigma, None)
        self.global_solarize_p = check.probability("global_solarize_p", global_solarize_p)
        self.local_solarize_p = check.probability("local_solarize_p", local_solarize_p)
        self.interpolation = _interpolation(interpolation)
        self._global = self._pipeline("global")
        self._local = self._pipeline("local")
        # The same chains for PIL images, without v2's per-op dispatch.
        self._global_pil = PILViewChain.of(self, "global", _SOLARIZE_THRESHOLD)
        self._local_pil = PILViewChain.of(self, "local", _SOLARIZE_THRESHOLD)
        self._frozen = True

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
        return self.num_global_crops + self.num_local_crops

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
        args = ",\n".join(f"    {k}={v!r}" for k, v in vars(self).items() if k[0] != "_")
        return f"{type(self).__name__}(\n{args},\n)"


def multicrop_collate(
    batch: Sequence[tuple[Sequence[torch.Tensor], int | torch.Tensor]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stacks ``(crops, label)`` samples crop-wise, for ``DataLoader(collate_fn=...)``.

    Shapes: ``b * ([(c, h_i, w_i)] * n, label) -> ([(b, c, h_i, w_i)] * n, (b,))``; crop order
    is kept (global crops first, as :class:`MultiCropTransform` produces them).

    Args:
        batch: Non-empty sequence of ``(crops, label)``; every sample has the same number of
            crops and crop ``i`` has the same shape in every sample. Labels are ints or
            one-element integer tensors.

    Returns:
        ``(crops, labels)`` where ``crops[i]`` stacks crop ``i`` over the batch and ``labels``
        is an int64 tensor ``(b,)``.

    Raises:
        ValueError: If the batch is empty, a sample is not a ``(crops, label)`` pair, the crop
            counts differ, or crop ``i`` has different shapes across samples.
        TypeError: If the crops of a sample are not a list of tensors or a label is not an int
            or a one-element integer tensor (bools and floats are rejected).

    Example:
        >>> sample = ([torch.zeros(3, 8, 8), torch.zeros(3, 4, 4)], 7)
        >>> crops, labels = multicrop_collate([sample, sample])
        >>> [tuple(c.shape) for c in crops], labels
        ([(2, 3, 8, 8), (2, 3, 4, 4)], tensor([7, 7]))
    """
    pairs = [sample_pair(j, sample, "crops") for j, sample in enumerate(check_batch(batch))]
    first: Sequence[Any] = ()
    for j, (crops, _) in enumerate(pairs):
        if not isinstance(crops, Sequence) or isinstance(crops, (str, bytes)):
            raise TypeError(
                f"the crops of batch[{j}] must be a list of tensors, got {type(crops).__name__}"
            )
        if len(crops) == 0:
            raise ValueError(f"batch[{j}] must be a (crops, label) pair with >= 1 crop")
        first = first or crops
        if len(crops) != len(first):
            raise ValueError(
                f"all samples must have the same number of crops: sample 0 has {len(first)}, "
                f"sample {j} has {len(crops)}"
            )
        for i, crop in enumerate(crops):
            if not isinstance(crop, torch.Tensor):
                raise TypeError(f"crop {i} of sample {j} must be a tensor, got {type(crop)}")
            if crop.shape != first[i].shape:
                raise ValueError(
                    f"crop {i} of sample {j} has shape {tuple(crop.shape)} but crop {i} of "
                    f"sample 0 has shape {tuple(first[i].shape)}"
                )
    labels = torch.stack([label_tensor(j, label) for j, (_, label) in enumerate(pairs)])
    return [torch.stack([crops[i] for crops, _ in pairs]) for i in range(len(first))], labels


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
    mode = _interpolation(interpolation)
    steps = [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(crop)]
    steps += _to_float(m, s)
    description = (
        f"eval_transform(crop_size={crop}, resize_size={resize}, mean={m}, std={s}, "
        f"interpolation={mode!r})"
    )
    return _EvalTransform(v2.Compose(steps), description)
