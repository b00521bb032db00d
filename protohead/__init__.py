"""protohead: t-ReX building blocks for supervised models that transfer.

Drop-in PyTorch modules for the supervised training setup of Sariyildiz et al., "No Reason
for No Supervision: Improved Generalization in Supervised Models" (ICLR 2023): multi-crop
augmentation, an expendable projector, a cosine-softmax classifier and online class means
filled by an EMA teacher.

The core blocks live at the top level; the rest is in wings: :mod:`protohead.augment`
(multi-crop), :mod:`protohead.data` (datasets and collate), :mod:`protohead.train` (the
trainer) and :mod:`protohead.evaluation` (the transfer protocol). Imports flow one way: the
core imports no wing, ``augment`` only the core, ``data`` the core and ``augment``; only the
entry points import ``train`` and ``evaluation`` (which reads checkpoints through
:mod:`protohead.train.checkpoint`).
"""

from typing import Any

from protohead import _legacy_paths
from protohead.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchedMultiCrop,
    MultiCropTransform,
    eval_transform,
    pad_images,
)
from protohead.backbone import BackboneAdapter
from protohead.classifier import PrototypeClassifier
from protohead.data.collate import multicrop_collate
from protohead.distributed import all_gather_rows, all_gather_variable
from protohead.ema import EMATeacher, cosine_momentum_schedule
from protohead.encoder import MultiCropEncoder, group_by_resolution
from protohead.memory import PrototypeMemoryBank
from protohead.model import TReX, multicrop_cross_entropy
from protohead.presets import PRESETS, TReXPreset, get_preset
from protohead.pretrained import list_pretrained, load_pretrained
from protohead.projector import Projector

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "BackboneAdapter",
    "BatchedMultiCrop",
    "EMATeacher",
    "MultiCropEncoder",
    "MultiCropTransform",
    "Projector",
    "PrototypeClassifier",
    "PrototypeMemoryBank",
    "TReX",
    "TReXPreset",
    "__version__",
    "all_gather_rows",
    "all_gather_variable",
    "cosine_momentum_schedule",
    "eval_transform",
    "get_preset",
    "group_by_resolution",
    "list_pretrained",
    "load_pretrained",
    "multicrop_collate",
    "multicrop_cross_entropy",
    "pad_images",
]

_legacy_paths.install()


def __getattr__(name: str) -> Any:
    # Names renamed in 0.2 still resolve, with a FutureWarning naming the new one.
    new = _legacy_paths.RENAMED.get(f"{__name__}.{name}")
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _legacy_paths.warn_moved(f"{__name__}.{name}", new)
    return _legacy_paths.resolve(new)
