"""The multi-crop settings of t-ReX, in one frozen, validated object.

:class:`MultiCropConfig` is the single source of the multi-crop settings: the per-image
:class:`~protohead.augment.multicrop.MultiCropTransform`, the batched
:class:`~protohead.augment.batched.BatchedMultiCrop` and the paper's presets
(:class:`~protohead.presets.TReXPreset` extends it) all read their crop counts, sizes, scales
and augmentation probabilities from it, so a setting is declared, defaulted and checked once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from torchvision.transforms import InterpolationMode

from protohead import _validation as check

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MultiCropConfig"]

IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)

# Modes every op supports on both the PIL and the tensor path (BOX/HAMMING/LANCZOS are PIL-only).
INTERPOLATIONS: Final = (
    InterpolationMode.NEAREST,
    InterpolationMode.NEAREST_EXACT,
    InterpolationMode.BILINEAR,
    InterpolationMode.BICUBIC,
)


def check_interpolation(value: object) -> InterpolationMode:
    allowed = ", ".join(m.name for m in INTERPOLATIONS)
    message = f"interpolation must be an InterpolationMode in {{{allowed}}}, got {value!r}"
    if not isinstance(value, InterpolationMode):
        raise TypeError(message)
    if value not in INTERPOLATIONS:
        raise ValueError(message)
    return value


@dataclass(frozen=True, kw_only=True)
class MultiCropConfig:
    """DINO-style multi-crop settings of t-ReX / t-ReX* (Sariyildiz et al., ICLR 2023).

    Every crop kind (global, local) is ``RandomResizedCrop(size, scale, ratio)`` -> flip ->
    colour jitter -> grayscale -> Gaussian blur -> solarize -> ``Normalize(mean, std)``. The
    values are checked and normalised on construction (tuples of floats; sequences are copied),
    and the object is immutable: :meth:`replace` derives a variant.

    Attributes:
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
        TypeError: If a setting has the wrong type.
        ValueError: If a setting is out of range.

    Example:
        >>> config = MultiCropConfig(num_local_crops=2, local_crop_size=32)
        >>> config.num_crops, config.local_crop_scale
        (3, (0.05, 0.25))
        >>> config.replace(global_crop_size=64).global_crop_size
        64
    """

    num_global_crops: int = 1
    num_local_crops: int = 8
    global_crop_size: int = 224
    local_crop_size: int = 96
    global_crop_scale: tuple[float, float] = (0.25, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.25)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    flip_p: float = 0.5
    color_jitter: tuple[float, ...] = (0.4, 0.4, 0.2, 0.1)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    global_blur_p: float = 0.2
    local_blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    global_solarize_p: float = 0.2
    local_solarize_p: float = 0.0
    interpolation: InterpolationMode = InterpolationMode.BICUBIC

    def __post_init__(self) -> None:
        mean, std = check.mean_std(self.mean, self.std)
        jitter = check.reals("color_jitter", self.color_jitter, 4)
        if min(jitter[:3]) < 0.0 or not 0.0 <= jitter[3] <= 0.5:
            raise ValueError(
                "color_jitter must be (brightness, contrast, saturation, hue) with the first "
                f"three >= 0 and hue in [0, 0.5], got {jitter}"
            )
        values: dict[str, object] = {
            "num_global_crops": check.integer("num_global_crops", self.num_global_crops, 1),
            "num_local_crops": check.integer("num_local_crops", self.num_local_crops, 0),
            "global_crop_size": check.integer("global_crop_size", self.global_crop_size, 1),
            "local_crop_size": check.integer("local_crop_size", self.local_crop_size, 1),
            "global_crop_scale": check.interval("global_crop_scale", self.global_crop_scale, 1.0),
            "local_crop_scale": check.interval("local_crop_scale", self.local_crop_scale, 1.0),
            "ratio": check.interval("ratio", self.ratio, None),
            "mean": mean,
            "std": std,
            "color_jitter": jitter,
            "blur_sigma": check.interval("blur_sigma", self.blur_sigma, None),
            "interpolation": check_interpolation(self.interpolation),
        }
        for name in PROBABILITIES:
            values[name] = check.probability(name, getattr(self, name))
        for name, value in values.items():  # frozen: normalised values go in this way
            object.__setattr__(self, name, value)

    @property
    def num_crops(self) -> int:
        """Crops per image: ``num_global_crops + num_local_crops``."""
        return self.num_global_crops + self.num_local_crops

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the multi-crop settings, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(MultiCropConfig))

    def replace(self, **overrides: Any) -> MultiCropConfig:
        """A copy with some settings changed (checked like the constructor's).

        Raises:
            TypeError: If a key is not a setting, or a value has the wrong type.
            ValueError: If a value is out of range.
        """
        return dataclasses.replace(self, **_known(type(self), overrides))

    def multicrop_config(self) -> MultiCropConfig:
        """The multi-crop settings alone (drops the fields a subclass such as a preset adds)."""
        return MultiCropConfig(**{name: getattr(self, name) for name in self.field_names()})

    @classmethod
    def resolve(
        cls, config: MultiCropConfig | None, settings: Mapping[str, Any]
    ) -> MultiCropConfig:
        """``config`` (default settings when ``None``) with ``settings`` applied.

        What the augmenters' constructors call: ``MultiCropTransform(config, **settings)``.

        Raises:
            TypeError: If ``config`` is not a ``MultiCropConfig`` or a key is not a setting.
            ValueError: If a value is out of range.
        """
        if config is None:
            return MultiCropConfig(**_known(MultiCropConfig, settings))
        if not isinstance(config, MultiCropConfig):
            raise TypeError(f"config must be a MultiCropConfig, got {type(config).__name__}")
        return config.multicrop_config().replace(**settings) if settings else config


PROBABILITIES: Final = (
    "flip_p",
    "color_jitter_p",
    "grayscale_p",
    "global_blur_p",
    "local_blur_p",
    "global_solarize_p",
    "local_solarize_p",
)


def _known(cls: type, settings: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise TypeError(f"unknown settings {unknown}; allowed: {sorted(allowed)}")
    return dict(settings)
