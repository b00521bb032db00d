"""Frozen feature extraction with the evaluation transform, optionally cached on disk.

In the transfer protocol of Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023) the
backbone is frozen and only its pooled features are used (the projector is discarded): images go
through Resize(224, bicubic) -> CenterCrop(224) -> ImageNet normalisation for both splits, the
backbone runs in eval mode without gradients, and a linear classifier is trained on the result.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from protohead.evaluation.cache import FeatureCache, model_checksum

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TransformConfig",
    "cached_features",
    "extract_features",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = {
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "nearest": transforms.InterpolationMode.NEAREST,
}
_T = TypeVar("_T")


@dataclass(frozen=True)
class TransformConfig:
    """The evaluation transform: Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize.

    Args:
        resize: Shorter side after resizing, ``>= 1`` (paper: 224).
        crop: Side of the centre crop, ``1 <= crop <= resize`` (paper: 224).
        interpolation: ``"bicubic"`` (paper), ``"bilinear"`` or ``"nearest"``.
        mean: Per-channel normalisation mean (default: ImageNet).
        std: Per-channel normalisation std, each ``> 0`` (default: ImageNet).

    Raises:
        ValueError: On an out-of-range value.

    Example:
        >>> from PIL import Image
        >>> transform = TransformConfig(resize=36, crop=32).build()
        >>> transform(Image.new("RGB", (50, 40))).shape
        torch.Size([3, 32, 32])
    """

    resize: int = 224
    crop: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize < 1:
            raise ValueError(f"resize must be >= 1, got {self.resize}")
        if not 1 <= self.crop <= self.resize:
            raise ValueError(f"crop must be in [1, resize={self.resize}], got {self.crop}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(
                f"mean and std must have equal length and std > 0, got {self.mean} / {self.std}"
            )

    def build(self) -> Callable[[Any], torch.Tensor]:
        """The torchvision transform, PIL image -> ``(c, crop, crop)`` float tensor."""
        composed: Callable[[Any], torch.Tensor] = transforms.Compose(
            [
                transforms.Resize(self.resize, interpolation=_INTERPOLATIONS[self.interpolation]),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                transforms.Normalize(list(self.mean), list(self.std)),
            ]
        )
        return composed

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (part of the feature-cache key)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _progress(items: Iterable[_T], total: int, desc: str, enabled: bool) -> Iterator[_T]:
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=desc, unit="batch")
        return
    # Without tqdm: about ten log lines per pass.
    every, start = max(1, total // 10), time.perf_counter()
    for index, item in enumerate(items, start=1):
        yield item
        if index % every == 0 or index == total:
            elapsed = time.perf_counter() - start
            logger.info("%s: %d/%d batches (%.0fs)", desc, index, total, elapsed)


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def extract_features(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen backbone over a dataset: images ``(b, c, h, w) -> (b, d)`` features.

    The model is deep-copied to ``device`` and put in eval mode there, so the caller's module
    (its device, training flags, weights) is never touched.

    Args:
        model: Any module returning pooled ``(b, d)`` features, e.g. a
            :class:`~protohead.backbone.BackboneAdapter`.
        dataset: Items ``(image tensor, integer label)``.
        batch_size: ``>= 1``.
        num_workers: DataLoader workers, ``>= 0``.
        device: ``None`` picks CUDA when available, else the CPU.
        progress: Show a tqdm bar (when installed) or log progress lines.
        desc: Label of the progress output.

    Returns:
        ``(features (n, d) float32, labels (n,) int64)``, both on the CPU.

    Raises:
        ValueError: If ``batch_size``/``num_workers`` is out of range, the dataset is empty or
            the model does not return a ``(b, d)`` tensor.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(5, 3, 8, 8), torch.arange(5))
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> feats, labels = extract_features(net, data, batch_size=2, device="cpu", progress=False)
        >>> feats.shape, labels.tolist()
        (torch.Size([5, 4]), [0, 1, 2, 3, 4])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("dataset must hold at least one image, got an empty dataset")
    target = _resolve_device(device)
    net = copy.deepcopy(model).to(target).eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=target.type == "cuda",
    )
    feature_parts: list[torch.Tensor] = []
    label_parts: list[torch.Tensor] = []
    with torch.no_grad():
        batches = _progress(loader, len(loader), desc, progress)
        for images, labels in batches:
            out = net(images.to(target, non_blocking=True))
            if not isinstance(out, torch.Tensor) or out.ndim != 2:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"model must return pooled (b, d) features, got {shape}; wrap a "
                    "classification model in protohead.backbone.BackboneAdapter"
                )
            # Kept on the device until the end: one transfer instead of a sync per batch.
            feature_parts.append(out.float())
            label_parts.append(torch.as_tensor(labels, dtype=torch.long))
    return torch.cat(feature_parts).cpu(), torch.cat(label_parts)


def cached_features(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    cache: FeatureCache | None,
    dataset_config: Mapping[str, Any],
    split: str,
    transform_config: Mapping[str, Any],
    checksum: str | None = None,
    **extract_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """:func:`extract_features` behind a :class:`~protohead.evaluation.cache.FeatureCache`.

    Args:
        model: The frozen backbone.
        dataset: The split's dataset.
        cache: The cache, or ``None`` to always extract.
        dataset_config: What determines the dataset's content (e.g.
            :attr:`TransferDataset.config <protohead.evaluation.pairs.TransferDataset>`, which
            holds resolved roots and a fingerprint of the image files); it must change whenever
            the images or labels do, since the cache trusts it.
        split: ``"trainval"``, ``"test"`` or any split name.
        transform_config: What determines the transform (:meth:`TransformConfig.as_dict`).
        checksum: Precomputed :func:`model_checksum` of ``model`` (saves rehashing per split).
        **extract_kwargs: Passed to :func:`extract_features`.

    Returns:
        ``(features (n, d), labels (n,), hit)``; ``hit`` tells whether the cache answered. An
        entry whose image count differs from ``len(dataset)`` is recomputed.

    Example:
        >>> import tempfile
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(4, 3, 8, 8), torch.arange(4))
        >>> net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> cache = FeatureCache(tempfile.mkdtemp())
        >>> kw = dict(cache=cache, dataset_config={"name": "toy"}, split="test",
        ...           transform_config={}, device="cpu", progress=False)
        >>> [cached_features(net, data, **kw)[2] for _ in range(2)]
        [False, True]
    """
    if cache is None:
        return (*extract_features(model, dataset, **extract_kwargs), False)
    key = cache.key(
        model=model_checksum(model) if checksum is None else checksum,
        dataset=dataset_config,
        split=split,
        transform=transform_config,
    )
    found = cache.load(key)
    # A last guard for configs without a file fingerprint (e.g. hand-written ones): a
    # different image count means the files changed under the same configuration.
    if found is not None and found[0].shape[0] == len(dataset):  # type: ignore[arg-type]
        logger.info("feature cache hit: %s", cache.path(key))
        return found[0], found[1], True
    features, labels = extract_features(model, dataset, **extract_kwargs)
    cache.save(key, features, labels)
    return features, labels, False
