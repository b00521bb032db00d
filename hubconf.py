"""torch.hub entry points of protohead: the released t-ReX / t-ReX* ResNet-50 weights.

    model = torch.hub.load("<owner>/protohead", "trex_resnet50")

Each entry returns a stock ``torchvision.models.resnet50`` holding the weights released by the
authors of t-ReX (Sariyildiz et al., ICLR 2023), downloaded into torch.hub's cache. The weights
are under the authors' licence, CC BY-NC-SA 4.0 (non-commercial); protohead does not
redistribute them. The ``fc`` classifier is not released and keeps its random initialisation.

This file lives at the repository root for torch.hub only; the installed package does not use it.
"""

from __future__ import annotations

import torchvision
from torch import nn

from protohead.pretrained import load_pretrained as _load_pretrained

# torch.hub checks these before running an entry point; importing protohead needs einops too.
dependencies = ["torch", "torchvision", "einops"]


def _entry(name: str, pretrained: bool, progress: bool, weights_source: str | None) -> nn.Module:
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be a bool, got {type(pretrained).__name__}")
    if not pretrained:
        if weights_source is not None:
            raise ValueError("weights_source goes with pretrained=True, got pretrained=False")
        model: nn.Module = torchvision.models.resnet50()
        return model
    return _load_pretrained(name, source=weights_source, progress=progress)


def trex_resnet50(
    pretrained: bool = True, progress: bool = True, weights_source: str | None = None
) -> nn.Module:
    """t-ReX ResNet-50 of the paper (IN1K top-1 78.0, mean transfer log-odds 1.1704).

    Weights: CC BY-NC-SA 4.0 (the authors'). ``fc`` keeps its random initialisation.

    Args:
        pretrained: Load the released weights; ``False`` gives an untrained resnet50.
        progress: Show a progress bar while downloading.
        weights_source: A local path or URL of the file, instead of the authors' server.
    """
    return _entry("trex_resnet50", pretrained, progress, weights_source)


def trex_star_resnet50(
    pretrained: bool = True, progress: bool = True, weights_source: str | None = None
) -> nn.Module:
    """t-ReX* ResNet-50 of the paper (IN1K top-1 80.2, mean transfer log-odds 0.8829).

    Weights: CC BY-NC-SA 4.0 (the authors'). ``fc`` keeps its random initialisation.

    Args:
        pretrained: Load the released weights; ``False`` gives an untrained resnet50.
        progress: Show a progress bar while downloading.
        weights_source: A local path or URL of the file, instead of the authors' server.
    """
    return _entry("trex_star_resnet50", pretrained, progress, weights_source)


def trex_resnet50_repro(
    pretrained: bool = True, progress: bool = True, weights_source: str | None = None
) -> nn.Module:
    """t-ReX ResNet-50 reproduced by the authors (IN1K top-1 77.9, transfer log-odds 1.1664).

    Weights: CC BY-NC-SA 4.0 (the authors'). ``fc`` keeps its random initialisation.

    Args:
        pretrained: Load the released weights; ``False`` gives an untrained resnet50.
        progress: Show a progress bar while downloading.
        weights_source: A local path or URL of the file, instead of the authors' server.
    """
    return _entry("trex_resnet50_repro", pretrained, progress, weights_source)


def trex_star_resnet50_repro(
    pretrained: bool = True, progress: bool = True, weights_source: str | None = None
) -> nn.Module:
    """t-ReX* ResNet-50 reproduced by the authors (IN1K top-1 80.2, transfer log-odds 0.8800).

    Weights: CC BY-NC-SA 4.0 (the authors'). ``fc`` keeps its random initialisation.

    Args:
        pretrained: Load the released weights; ``False`` gives an untrained resnet50.
        progress: Show a progress bar while downloading.
        weights_source: A local path or URL of the file, instead of the authors' server.
    """
    return _entry("trex_star_resnet50_repro", pretrained, progress, weights_source)
