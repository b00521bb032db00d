"""protohead: t-ReX building blocks for supervised models that transfer.

Drop-in PyTorch modules for the supervised training setup of Sariyildiz et al., "No Reason
for No Supervision: Improved Generalization in Supervised Models" (ICLR 2023): multi-crop
augmentation, an expendable projector, a cosine-softmax classifier and online class means
filled by an EMA teacher.
"""

from protohead.backbone import BackboneAdapter
from protohead.classifier import PrototypeClassifier
from protohead.distributed import all_gather_rows, all_gather_variable
from protohead.ema import EMATeacher, cosine_momentum_schedule
from protohead.encoder import MultiCropEncoder, group_by_resolution
from protohead.gpu_multicrop import GPUMultiCrop
from protohead.image_batch import pad_images
from protohead.memory import PrototypeMemoryBank
from protohead.model import TReX, multicrop_cross_entropy
from protohead.presets import PRESETS, TReXPreset, get_preset
from protohead.pretrained import list_pretrained, load_pretrained
from protohead.projector import Projector
from protohead.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropTransform,
    eval_transform,
    multicrop_collate,
)

__version__ = "0.1.0"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "BackboneAdapter",
    "EMATeacher",
    "GPUMultiCrop",
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
