"""On-disk cache of extracted features, keyed by the model's weights and the data it saw.

Extracting frozen features is the expensive part of the transfer protocol of Sariyildiz et al.
(ICLR 2023); the regularisation search then reruns cheaply on cached features. An entry's key
hashes the model checksum (:func:`model_checksum`, over every state_dict tensor), the dataset's
configuration, the split and the transform configuration, so changing any weight, dataset option
or image size gives a different entry. The dataset configurations built by
:mod:`~protohead.evaluation.datasets` hold resolved absolute roots and, for file-backed datasets,
a fingerprint of every image file (:mod:`~protohead.evaluation.fingerprint`), so rewritten images
or a relative path run from another directory miss the cache instead of reusing stale features.
Entries are written atomically (temporary file in the same directory, then ``os.replace``), so a
crash never leaves a truncated entry under the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protohead.atomic_files import atomic_write

__all__ = ["FeatureCache", "model_checksum"]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1


def model_checksum(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a model's state_dict: every key, dtype, shape and tensor byte.

    Args:
        model: A module (its ``state_dict()`` is hashed) or a state_dict.

    Returns:
        64 hex digits; equal for equal weights, different when any tensor changes.

    Raises:
        TypeError: If ``model`` is neither a module nor a mapping of tensors.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> before = model_checksum(layer)
        >>> with torch.no_grad():
        ...     _ = layer.bias.add_(1.0)
        >>> before == model_checksum(layer)
        False
        >>> model_checksum(layer) == model_checksum(layer.state_dict())
        True
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(state, Mapping):
        raise TypeError(f"model must be an nn.Module or a state_dict, got {type(model).__name__}")
    digest = hashlib.sha256()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} must be a tensor, got {type(tensor)}")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Directory of cached ``(features, labels)`` pairs.

    Args:
        root: Cache directory; created on the first :meth:`save`.

    Example:
        >>> import tempfile
        >>> cache = FeatureCache(tempfile.mkdtemp())
        >>> key = cache.key(model="abc", dataset={"name": "fake"}, split="test", transform={})
        >>> cache.load(key) is None
        True
        >>> _ = cache.save(key, torch.zeros(3, 4), torch.tensor([0, 1, 2]))
        >>> [t.shape for t in cache.load(key)]
        [torch.Size([3, 4]), torch.Size([3])]
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def key(
        self,
        *,
        model: str,
        dataset: Mapping[str, Any],
        split: str,
        transform: Mapping[str, Any],
    ) -> str:
        """Name of the entry for a model checksum, dataset configuration, split and transform.

        Returns:
            ``"<dataset>-<split>-<hash>"``, safe as a file name.
        """
        payload = json.dumps(
            {
                "version": _FORMAT_VERSION,
                "model": model,
                "dataset": dict(dataset),
                "split": split,
                "transform": dict(transform),
            },
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()[:24]
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset.get('name', 'data')}-{split}")
        return f"{label}-{digest}"

    def path(self, key: str) -> Path:
        """File of an entry."""
        return self.root / f"{key}.pt"

    def load(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached ``(features (n, d), labels (n,))``, or ``None`` on a miss.

        An unreadable or malformed entry counts as a miss (and is logged), so it is recomputed
        and overwritten.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            features, labels = entry["features"], entry["labels"]
            valid = (
                entry.get("key") == key
                and isinstance(features, torch.Tensor)
                and isinstance(labels, torch.Tensor)
                and features.ndim == 2
                and labels.ndim == 1
                and features.shape[0] == labels.shape[0]
            )
        except Exception as err:  # any unreadable file is a miss, never a crash
            logger.warning("ignoring unreadable feature cache entry %s: %s", path, err)
            return None
        if not valid:
            logger.warning("ignoring malformed feature cache entry %s", path)
            return None
        return features, labels

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor) -> Path:
        """Write an entry atomically and return its path.

        Raises:
            ValueError: If the shapes are not ``(n, d)`` and ``(n,)``.
        """
        if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
            raise ValueError(
                "features must be (n, d) and labels (n,), got shapes "
                f"{tuple(features.shape)} and {tuple(labels.shape)}"
            )
        path = self.path(key)
        with atomic_write(path, "wb") as handle:
            torch.save({"key": key, "features": features.cpu(), "labels": labels.cpu()}, handle)
        return path
