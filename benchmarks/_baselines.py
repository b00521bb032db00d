"""The "authors' algorithm" baselines of ``bench_peers.py``, written from the paper's text.

Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023) describe t-ReX's blocks; these
are the straightforward implementations of those descriptions (not the authors' code, which
is under a non-commercial licence): the class means of the OCM memory re-reduced from the
whole memory at every step, the EMA teacher updated one parameter at a time, and the
multi-crop built from torchvision's classic (v1) transforms applied per image, with the blur
and solarization of DINO-style pipelines done by PIL. Settings come from a
``MultiCropTransform``, so both sides do identical work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor, nn
from torchvision import transforms as v1

from protohead.augment.multicrop import MultiCropTransform

__all__ = ["AuthorsMemory", "AuthorsMultiCrop", "authors_ema_update"]


class AuthorsMemory(nn.Module):
    """FIFO memory of (feature, label) pairs whose class means are recomputed every step."""

    def __init__(self, dim: int, size: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.size, self.ptr = num_classes, size, 0
        # Random start, as the paper's memory: every class has a prototype from step one.
        self.register_buffer("features", torch.randn(size, dim))
        self.register_buffer("labels", torch.randint(0, num_classes, (size,)))

    def _mode(self) -> str:
        """Invalid-input policy as TReX asks its memory: none is checked, like the authors'."""
        return "skip"

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        slots = (self.ptr + torch.arange(features.shape[0])) % self.size
        self.features[slots] = features.float()
        self.labels[slots] = labels
        self.ptr = (self.ptr + features.shape[0]) % self.size

    def prototypes(self) -> Tensor:
        """L2-normalised class means, re-reduced over the whole memory: ``O(size * dim)``."""
        sums = torch.zeros(self.num_classes, self.features.shape[1])
        sums.index_add_(0, self.labels, self.features)
        counts = torch.bincount(self.labels, minlength=self.num_classes).clamp_min(1)
        return F.normalize(sums / counts[:, None], dim=1)


@torch.no_grad()
def authors_ema_update(teacher: Iterable[Tensor], student: Iterable[Tensor], m: float) -> None:
    """``teacher = m * teacher + (1 - m) * student``, one parameter (two kernels) at a time."""
    for p_t, p_s in zip(teacher, student, strict=True):
        p_t.mul_(m).add_(p_s.detach(), alpha=1 - m)


class _PILBlur:
    """Gaussian blur with probability ``p``, radius (PIL's sigma) uniform in ``sigma``."""

    def __init__(self, p: float, sigma: tuple[float, float]) -> None:
        self.p, self.sigma = p, sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        if float(torch.rand(())) >= self.p:
            return image
        radius = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class _PILSolarize:
    """PIL solarization at 128 with probability ``p``."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.solarize(image, 128) if float(torch.rand(())) < self.p else image


class AuthorsMultiCrop:
    """t-ReX multi-crop as a per-image chain of torchvision v1 transforms on PIL images."""

    def __init__(self, settings: MultiCropTransform) -> None:
        s = settings
        self.num_global, self.num_local = s.num_global_crops, s.num_local_crops
        self.global_view = self._view(s, s.global_crop_size, s.global_crop_scale, "global")
        self.local_view = self._view(s, s.local_crop_size, s.local_crop_scale, "local")

    @staticmethod
    def _view(
        s: MultiCropTransform, size: int, scale: tuple[float, float], kind: str
    ) -> Callable[[Image.Image], Tensor]:
        return v1.Compose(
            [
                v1.RandomResizedCrop(size, scale, s.ratio, interpolation=s.interpolation),
                v1.RandomHorizontalFlip(s.flip_p),
                v1.RandomApply([v1.ColorJitter(*s.color_jitter)], p=s.color_jitter_p),
                v1.RandomGrayscale(s.grayscale_p),
                _PILBlur(getattr(s, f"{kind}_blur_p"), s.blur_sigma),
                _PILSolarize(getattr(s, f"{kind}_solarize_p")),
                v1.ToTensor(),
                v1.Normalize(s.mean, s.std),
            ]
        )

    def __call__(self, image: Image.Image) -> list[Tensor]:
        crops = [self.global_view(image) for _ in range(self.num_global)]
        return crops + [self.local_view(image) for _ in range(self.num_local)]
