"""Released t-ReX / t-ReX* weights by name.

The authors of "No Reason for No Supervision: Improved Generalization in Supervised Models"
(Sariyildiz et al., ICLR 2023) publish ResNet-50 weights of t-ReX and t-ReX*, those of the
paper and two reproductions trained with their released code (these two with full training
checkpoints). :func:`load_pretrained` downloads them by name into ``torch.hub``'s cache and
returns a stock ``torchvision.models.resnet50`` holding them; its ``fc`` classifier is not
released and keeps its random initialisation.

**Licence.** The weights are the authors' work, released under CC BY-NC-SA 4.0
(non-commercial, share-alike, attribution), not under protohead's MIT licence. protohead does
not redistribute them: it downloads them from the authors' server on request.

Command line (maintainers): ``python -m protohead.pretrained --list`` prints the registry,
``python -m protohead.pretrained --print-sha256 NAME|PATH`` the SHA-256 to record for a file.
The full training checkpoints are read by :mod:`protohead.pretrained.authors_checkpoint`.
"""

from __future__ import annotations

from protohead.pretrained.files import (
    WeightsUnavailableError,
    file_sha256,
    hub_cache_dir,
    pretrained_file,
)
from protohead.pretrained.registry import (
    PRETRAINED,
    WEIGHTS_LICENSE,
    PretrainedWeights,
    list_pretrained,
    pretrained_info,
)
from protohead.pretrained.resnet import load_pretrained, released_state_dict

__all__ = [
    "PRETRAINED",
    "WEIGHTS_LICENSE",
    "PretrainedWeights",
    "WeightsUnavailableError",
    "file_sha256",
    "hub_cache_dir",
    "list_pretrained",
    "load_pretrained",
    "pretrained_file",
    "pretrained_info",
    "released_state_dict",
]
