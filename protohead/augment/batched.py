"""Batched multi-crop augmentation on the images' device (t-ReX, Sariyildiz et al., ICLR 2023).

:class:`BatchedMultiCrop` produces the same views as
:class:`~protohead.augment.multicrop.MultiCropTransform` (global crops then local crops, each
randomly resized-cropped, flipped, colour-jittered, grayscaled, blurred, solarized and
normalised) for a whole batch of uint8 images at once, with every random parameter drawn per
image and per crop. DataLoader workers then only decode, and the
accelerator (or a CPU core, still faster than PIL) does the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from protohead import _validation as check
from protohead.augment import kernels
from protohead.augment._cpu_chunks import (
    batch_taps,
    chunk_boxes,
    jitter_rows,
    normaliser,
    write_crops,
)
from protohead.augment._separable_filters import render_crops
from protohead.augment.config import MultiCropConfig
from protohead.augment.image_batch import as_image_batch, valid_region_float
from protohead.augment.kernels import crop_resize
from protohead.augment.multicrop import MultiCropTransform
from protohead.augment.params import CropParams, MultiCropParams, check_params, sample_crop_params

__all__ = ["BatchedMultiCrop"]

_SETTINGS = frozenset(MultiCropConfig.field_names())
_RESAMPLED = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
_OPTIONS = frozenset({"output_dtype", "channels_last", "cpu_chunk_size", "fuse"})
# Read-only after __init__ (_mean, _std and blur_kernel_size are derived from the settings).
_FROZEN = _SETTINGS | _OPTIONS | {"config", "blur_kernel_size", "_mean", "_std", "_frozen"}


class BatchedMultiCrop(nn.Module):
    """Batched, per-image-random t-ReX multi-crop augmentation for uint8 image batches.

    Same views and distributions as ``MultiCropTransform`` with the same arguments (one
    ``RandomResizedCrop -> flip -> ColorJitter (p) -> grayscale -> Gaussian blur -> solarize ->
    Normalize`` chain per crop), but every op runs once for the whole batch
    (:mod:`protohead.augment.functional`), with parameters drawn per image and per crop
    (:func:`~protohead.augment.params.sample_crop_params`) from an optional
    ``torch.Generator``. No host sync happens in ``forward`` on accelerators (move the
    module there with ``.to(device)``); on the CPU ops skip the samples they leave unchanged.
    Settings are read-only once built, as ``MultiCropTransform``'s: build a new module to change
    them (e.g. ``BatchedMultiCrop.from_transform(transform, **overrides)``).

    Differences from the PIL pipeline, all within the op tolerances tested against
    ``torchvision.transforms.v2.functional`` on float images:

    - Resampling is ``roi_align``: bilinear, with its adaptive box-filter antialias from 1.5x
      downscaling on (:func:`~protohead.augment.functional.resized_crops`), for both BILINEAR and
      BICUBIC (about 1 level mean absolute difference to bicubic); NEAREST modes raise.
    - Colour ops use torchvision's float formulas, without PIL's rounding to uint8 per op.
    - The blur is a true Gaussian with torchvision's kernel size ``2 * ceil(3 * sigma_hi) + 1``
      and reflect padding (PIL's blur is a box approximation).

    Shapes: ``(b, c, h, w)`` uint8, c in {1, 3} (or a list of ``(c, h_i, w_i)``) ->
    ``num_global_crops * [(b, 3, global_crop_size, global_crop_size)] +
    num_local_crops * [(b, 3, local_crop_size, local_crop_size)]``.

    Args:
        config: The multi-crop settings (:class:`~protohead.augment.config.MultiCropConfig`,
            shared with ``MultiCropTransform``); ``None`` uses its defaults. ``interpolation``
            must be BILINEAR or BICUBIC. Each setting reads through as an attribute of the same
            name, e.g. ``augmenter.num_local_crops``.
        output_dtype: Floating dtype of the outputs (e.g. ``torch.bfloat16``).
        channels_last: Return outputs in ``torch.channels_last`` memory format.
        cpu_chunk_size: Images processed together on a CPU device, >= 1, so temporaries
            stay in cache; on accelerators the whole batch is one chunk. Results do not
            depend on it (up to float rounding).
        fuse: On accelerators, run the colour ops, blur, solarize, flip, normalisation and
            cast of each crop size as one ``torch.compile``-d function (a few fused kernels
            instead of about a hundred memory passes; needs a working ``torch.compile``, e.g.
            Triton on CUDA). The first call of each crop size compiles (tens of seconds);
            later calls reuse it. Ignored on the CPU. Results agree with ``fuse=False`` up to
            float rounding.
        **settings: Settings to change, by their ``MultiCropConfig`` names.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range.
        AttributeError: When a setting is set or deleted after construction.

    Example:
        >>> aug = BatchedMultiCrop(num_local_crops=2, global_crop_size=32, local_crop_size=16)
        >>> images = torch.randint(0, 256, (4, 3, 40, 48), dtype=torch.uint8)
        >>> crops = aug(images, generator=torch.Generator().manual_seed(0))
        >>> [tuple(c.shape) for c in crops]
        [(4, 3, 32, 32), (4, 3, 16, 16), (4, 3, 16, 16)]
    """

    def __init__(
        self,
        config: MultiCropConfig | None = None,
        /,
        *,
        output_dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        cpu_chunk_size: int = 4,
        fuse: bool = False,
        **settings: Any,
    ) -> None:
        super().__init__()
        resolved = MultiCropConfig.resolve(config, settings)
        if resolved.interpolation not in _RESAMPLED:
            raise ValueError(
                "interpolation must be InterpolationMode.BILINEAR or BICUBIC for BatchedMultiCrop, "
                f"got {resolved.interpolation!r}"
            )
        if not isinstance(output_dtype, torch.dtype):
            raise TypeError(f"output_dtype must be a torch.dtype, got {output_dtype!r}")
        if not output_dtype.is_floating_point:
            raise ValueError(f"output_dtype must be a floating point dtype, got {output_dtype}")
        if not isinstance(channels_last, bool):
            raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
        if not isinstance(fuse, bool):
            raise TypeError(f"fuse must be a bool, got {fuse!r}")
        cpu_chunk_size = check.integer("cpu_chunk_size", cpu_chunk_size, 1)
        self.config = resolved
        self.output_dtype = output_dtype
        self.channels_last = channels_last
        self.cpu_chunk_size = cpu_chunk_size
        self.fuse = fuse
        self.blur_kernel_size = 2 * math.ceil(3.0 * self.blur_sigma[1]) + 1
        self._mean: Tensor
        self._std: Tensor
        # Derived from the arguments, so nothing needs saving in a state dict.
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self._frozen = True

    def __getattr__(self, name: str) -> Any:
        if name in _SETTINGS:  # the settings read through from the config
            return getattr(self.__dict__["config"], name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._check_mutable(name, "set")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        self._check_mutable(name, "delete")
        super().__delattr__(name)

    def _check_mutable(self, name: str, action: str) -> None:
        if name in _FROZEN and self.__dict__.get("_frozen", False):
            raise AttributeError(
                f"BatchedMultiCrop settings are read-only (cannot {action} {name!r}); build a "
                "new one instead, e.g. BatchedMultiCrop.from_transform(transform, **overrides)"
            )

    @classmethod
    def from_transform(cls, transform: MultiCropTransform, **overrides: object) -> BatchedMultiCrop:
        """Builds the batched twin of a ``MultiCropTransform``, with optional overrides.

        Raises:
            TypeError: If ``transform`` is not a ``MultiCropTransform`` or an override is not a
                constructor argument.

        Example:
            >>> t = MultiCropTransform(num_local_crops=4)
            >>> BatchedMultiCrop.from_transform(t, output_dtype=torch.bfloat16).num_crops
            5
        """
        if not isinstance(transform, MultiCropTransform):
            raise TypeError(
                f"transform must be a MultiCropTransform, got {type(transform).__name__}"
            )
        return cls(transform.config, **overrides)  # type: ignore[arg-type]

    @property
    def num_crops(self) -> int:
        """Total number of crops per image: ``num_global_crops + num_local_crops``."""
        return self.config.num_crops

    def extra_repr(self) -> str:
        return (
            f"{self.config!r}, output_dtype={self.output_dtype}, "
            f"channels_last={self.channels_last}, cpu_chunk_size={self.cpu_chunk_size}, "
            f"fuse={self.fuse}"
        )

    def sample_params(
        self, sizes: Tensor, generator: torch.Generator | None = None
    ) -> MultiCropParams:
        """Draws every crop's random parameters for images of valid sizes ``(b, 2)``.

        ``forward`` is ``render(images, sample_params(sizes, generator), sizes)``. Sizes must be
        integers >= 1: checked where ``sizes`` is on the CPU (e.g. from a host-side collate),
        clamped to >= 1 on an accelerator, where a check would sync.

        Raises:
            TypeError: If ``sizes`` is not an integer tensor or ``generator`` not a Generator.
            ValueError: If ``sizes`` is not ``(b, 2)``, a size is < 1 (on the CPU) or the
                generator is on another device.

        Example:
            >>> p = BatchedMultiCrop().sample_params(torch.tensor([[256, 256]] * 4))
            >>> p.global_crops.top.shape, p.local_crops.top.shape
            (torch.Size([1, 4]), torch.Size([8, 4]))
        """
        common = {
            "ratio": self.ratio,
            "flip_p": self.flip_p,
            "color_jitter": self.color_jitter,
            "color_jitter_p": self.color_jitter_p,
            "grayscale_p": self.grayscale_p,
            "blur_sigma": self.blur_sigma,
            "generator": generator,
        }
        return MultiCropParams(
            global_crops=sample_crop_params(
                sizes,
                self.num_global_crops,
                scale=self.global_crop_scale,
                blur_p=self.global_blur_p,
                solarize_p=self.global_solarize_p,
                **common,  # type: ignore[arg-type]
            ),
            local_crops=sample_crop_params(
                sizes,
                self.num_local_crops,
                scale=self.local_crop_scale,
                blur_p=self.local_blur_p,
                solarize_p=self.local_solarize_p,
                **common,  # type: ignore[arg-type]
            ),
        )

    def forward(
        self,
        images: Tensor | Sequence[Tensor],
        sizes: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Returns all crops of every image: global crops first, then local crops.

        Args:
            images: uint8 ``(b, c, h, w)`` batch, c in {1, 3}, or a non-empty list of uint8
                ``(c, h_i, w_i)`` images on one device (padded internally).
            sizes: Optional integer ``(b, 2)`` valid ``(h, w)`` of each image in a padded batch
                (top-left aligned), 1 <= h_i <= h and 1 <= w_i <= w; checked when on the CPU,
                clamped otherwise (checking would sync). ``None``: whole images. Not allowed
                with a list.
            generator: Optional ``torch.Generator`` on the images' device.

        Returns:
            ``num_crops`` tensors ``(b, 3, s, s)`` of dtype ``output_dtype``.

        Raises:
            TypeError: On a wrong type or dtype (images not uint8, sizes not integer).
            ValueError: On a wrong rank, channel count, shape, size value or device.
        """
        batch, valid = as_image_batch(images, sizes)
        full = valid is None
        if valid is None:
            valid = torch.empty((batch.shape[0], 2), dtype=torch.int64, device=batch.device)
            valid[:, 0], valid[:, 1] = batch.shape[2], batch.shape[3]
        params = self.sample_params(valid, generator)
        return self._render_batch(batch, None if full else valid, params)

    def render(
        self,
        images: Tensor | Sequence[Tensor],
        params: MultiCropParams,
        sizes: Tensor | None = None,
    ) -> list[Tensor]:
        """Renders the crops for given parameters (deterministic); inputs as :meth:`forward`.

        On the CPU every crop box must lie inside its image's valid region (see
        :func:`~protohead.augment.params.check_params`); on an accelerator reading the boxes
        would sync the host, so they are trusted there: sample them for these images' sizes.

        Raises:
            TypeError, ValueError: As :meth:`forward`, or if ``params`` does not match the batch.
        """
        batch, valid = as_image_batch(images, sizes)
        counts = (self.num_global_crops, self.num_local_crops)
        return self._render_batch(batch, valid, check_params(params, counts, batch, valid))

    def _render_batch(
        self, batch: Tensor, sizes: Tensor | None, params: MultiCropParams
    ) -> list[Tensor]:
        b, device = batch.shape[0], batch.device
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        groups = [
            (
                params.global_crops,
                self.global_crop_size,
                self.global_blur_p,
                self.global_solarize_p,
            ),
            (params.local_crops, self.local_crop_size, self.local_blur_p, self.local_solarize_p),
        ]
        # One tensor per crop: separate (smaller) blocks can be recycled by the host allocator.
        outs = [
            [
                torch.empty((b, 3, s, s), dtype=self.output_dtype, device=device, memory_format=fmt)
                for _ in range(p.num_crops)
            ]
            for p, s, _, _ in groups
        ]
        step = self.cpu_chunk_size if device.type == "cpu" else b
        cpu = kernels.compacts(device)
        if cpu:  # the taps once for the batch, reading windows of the uint8 images
            source = batch.expand(-1, 3, -1, -1)
            made = ((g, batch_taps(source, p, s, sizes)) for g, (p, s, _, _) in enumerate(groups))
            taps = {g: t for g, t in made if t is not None}
        norms = {s: normaliser(self._mean, self._std, s) for _, s, _, _ in groups if cpu}
        jitter = self.color_jitter_p > 0.0 and max(self.color_jitter) > 0.0
        for start in range(0, b, step):
            stop = min(b, start + step)
            for g, ((p, s, blur_p, solarize_p), crop_outs) in enumerate(
                zip(groups, outs, strict=True)
            ):
                if p.num_crops == 0:
                    continue
                chunk = p.images(start, stop)
                if cpu:  # in the jitter's order, flipped while written (see _cpu_chunks)
                    rows = jitter_rows(chunk, jitter)
                    x = render_crops(source, taps[g], chunk_boxes(chunk, b, start, rows))
                    x = self._crops(x, chunk, s, blur_p, solarize_p, rows)
                    write_crops(x, crop_outs, start, rows, chunk.flat("flip"), *norms[s])
                    continue
                images, valid = batch[start:stop], None if sizes is None else sizes[start:stop]
                x = self._resized(valid_region_float(images, valid), chunk, s)
                x = self._crops(x, chunk, s, blur_p, solarize_p)
                for k, out in enumerate(crop_outs):
                    out[start:stop].copy_(x.view(p.num_crops, stop - start, 3, s, s)[k])
        return [out for crop_outs in outs for out in crop_outs]

    @staticmethod
    def _boxes(p: CropParams) -> Tensor:
        """``(n * b, 4)`` boxes ``(top, left, height, width)``, crop-major."""
        return torch.stack([p.flat("top"), p.flat("left"), p.flat("height"), p.flat("width")], 1)

    def _resized(self, source: Tensor, p: CropParams, size: int) -> Tensor:
        """Crops of ``p`` from float ``source``: ``(b, 3, h, w) -> (n * b, 3, size, size)``."""
        image = torch.arange(p.batch_size, device=source.device).repeat(p.num_crops)
        return crop_resize(source, image, self._boxes(p), (size, size))

    def _crops(
        self,
        x: Tensor,
        p: CropParams,
        size: int,
        blur_p: float,
        solarize_p: float,
        rows: Tensor | None = None,
    ) -> Tensor:
        """The chain on resized crops ``x`` of a chunk: ``(n * b, 3, size, size)``, same shape.

        Row r of ``x`` is flat sample ``rows[r]`` (None: r); on the CPU the caller flips."""
        cpu = kernels.compacts(x.device)
        fused = self.fuse and not cpu
        names = ("brightness", "contrast", "saturation", "hue")
        chain = kernels.fused_crop_chain() if fused else kernels.crop_chain
        flat = p.flat if rows is None else lambda name: p.flat(name)[rows]
        return chain(
            x,
            flat("order"),
            torch.stack([flat(k) for k in names], 1),
            flat("jitter"),
            flat("grayscale"),
            flat("sigma"),
            flat("blur"),
            flat("solarize"),
            flat("flip"),
            self._mean.to(x.device),
            self._std.to(x.device),
            jitter=self.color_jitter_p > 0.0 and max(self.color_jitter) > 0.0,
            hue=self.color_jitter[3] > 0.0,
            grayscale=self.grayscale_p > 0.0,
            blur_size=min(self.blur_kernel_size, 2 * size - 1) if blur_p > 0.0 else 0,
            solarize=solarize_p > 0.0,
            flip=self.flip_p > 0.0 and not cpu,
            fused=fused,
            out_dtype=self.output_dtype if fused else x.dtype,
            normalize=not cpu,
        )
