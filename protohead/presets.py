"""The paper's configurations as named presets: t-ReX, t-ReX*, plain t-ReX and the baseline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from protohead.augment.config import MultiCropConfig

__all__ = ["PRESETS", "TReXPreset", "get_preset"]


@dataclass(frozen=True, kw_only=True)
class TReXPreset(MultiCropConfig):
    """Model and augmentation settings of one configuration of Sariyildiz et al. (ICLR 2023).

    A preset *is* a :class:`~protohead.augment.config.MultiCropConfig` (the multi-crop
    settings, declared and checked there once) plus the model settings below.
    :meth:`model_kwargs` feeds :class:`~protohead.TReX`, :meth:`multicrop_config` feeds
    :class:`~protohead.MultiCropTransform` and :class:`~protohead.BatchedMultiCrop`;
    :meth:`replace` derives a variant (e.g. smaller crops for 28 px images) without touching
    the original.

    Attributes:
        name: Preset name.
        projector_hidden_layers: Hidden layers of the projector; ``None`` means no projector.
        projector_hidden_dim: Width of the projector's hidden layers.
        projector_out_dim: Projector bottleneck dimension.
        projector_input_l2_norm: L2-normalise the projector input.
        temperature: Cosine-softmax temperature, or ``None`` for a linear classifier.
        memory_size: OCM memory slots; ``0`` learns the class weights instead.
        ema_momentum: Momentum of the EMA teacher that fills the memory.
        num_global_crops .. interpolation: The multi-crop settings, see
            :class:`~protohead.augment.config.MultiCropConfig` (the teacher sees the global
            crops).

    Example:
        >>> preset = get_preset("trex-star")
        >>> preset.projector_hidden_layers, preset.global_crop_scale
        (1, (0.4, 1.0))
        >>> get_preset("trex", global_crop_size=28).global_crop_size
        28
    """

    name: str
    projector_hidden_layers: int | None = 3
    projector_hidden_dim: int = 2048
    projector_out_dim: int = 256
    projector_input_l2_norm: bool = True
    temperature: float | None = 0.1
    memory_size: int = 8192
    ema_momentum: float = 0.999

    def replace(self, **overrides: Any) -> TReXPreset:
        """A copy with some fields changed.

        Raises:
            ValueError: If a key is not a field of the preset.
        """
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"overrides must be preset fields {sorted(fields)}, got {unknown}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values (enums by value), e.g. for a checkpoint.

        Example:
            >>> get_preset("trex").to_dict()["interpolation"]
            'bicubic'
        """
        return {
            name: value.value if isinstance(value, Enum) else value
            for name, value in dataclasses.asdict(self).items()
        }

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~protohead.TReX` (besides backbone/num_classes)."""
        return {
            "projector_hidden_layers": self.projector_hidden_layers,
            "projector_hidden_dim": self.projector_hidden_dim,
            "projector_out_dim": self.projector_out_dim,
            "projector_input_l2_norm": self.projector_input_l2_norm,
            "temperature": self.temperature,
            "memory_size": self.memory_size,
            "ema_momentum": self.ema_momentum,
            "num_global_crops": self.num_global_crops,
        }

    def transform_kwargs(self) -> dict[str, Any]:
        """The multi-crop settings as keyword arguments of
        :class:`~protohead.MultiCropTransform` (prefer passing :meth:`multicrop_config`)."""
        return {name: getattr(self, name) for name in MultiCropConfig.field_names()}


PRESETS: dict[str, TReXPreset] = {
    # t-ReX: 3-layer projector, OCM, crop scales that favour transfer.
    "trex": TReXPreset(name="trex"),
    # t-ReX*: 1-layer projector and larger crops, favouring the training task.
    "trex-star": TReXPreset(
        name="trex-star",
        projector_hidden_layers=1,
        global_crop_scale=(0.40, 1.0),
        local_crop_scale=(0.05, 0.40),
    ),
    # Plain t-ReX (Eq. 1): learnable cosine classifier instead of OCM.
    "trex-plain-1": TReXPreset(
        name="trex-plain-1",
        projector_hidden_layers=1,
        memory_size=0,
        global_crop_scale=(0.40, 1.0),
        local_crop_scale=(0.05, 0.40),
    ),
    "trex-plain-3": TReXPreset(name="trex-plain-3", memory_size=0),
    # Classic supervised training: one RandomResizedCrop + flip, linear classifier, CE.
    "baseline": TReXPreset(
        name="baseline",
        projector_hidden_layers=None,
        temperature=None,
        memory_size=0,
        num_local_crops=0,
        global_crop_scale=(0.08, 1.0),
        color_jitter_p=0.0,
        grayscale_p=0.0,
        global_blur_p=0.0,
        local_blur_p=0.0,
        global_solarize_p=0.0,
    ),
}


def get_preset(name: str, **overrides: Any) -> TReXPreset:
    """Look up a preset by name (see :data:`PRESETS`) and apply overrides.

    Args:
        name: One of ``"trex"``, ``"trex-star"``, ``"trex-plain-1"``, ``"trex-plain-3"``,
            ``"baseline"``.
        **overrides: Fields to change, see :class:`TReXPreset`.

    Raises:
        ValueError: If ``name`` is unknown or an override is not a field.

    Example:
        >>> get_preset("baseline").num_crops
        1
    """
    if name not in PRESETS:
        raise ValueError(f"name must be one of {sorted(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    return preset.replace(**overrides) if overrides else preset
