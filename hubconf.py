"""torch.hub entry points of protohead: the released t-ReX / t-ReX* ResNet-50 weights.

    model = torch.hub.load("<owner>/protohead", "trex_resnet50")

Each entry returns a stock ``torchvision.models.resnet50`` holding the weights released by the
authors of t-ReX (Sariyildiz et al., ICLR 2023), downloaded into torch.hub's cache. The weights
are under the authors' licence, CC BY-NC-SA 4.0 (non-commercial); protohead does not
redistribute them. The ``fc`` classifier is not released and keeps its random initialisation.

This file lives at the repository root for torch.hub only; the installed package does not use it.
"""

from __future__ import annotations

from collections.abc import Callable as _Callable

import torchvision
from torch import nn

from protohead.pretrained import load_pretrained as _load_pretrained
from protohead.pretrained import pretrained_info as _pretrained_info

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


def _entry_point(name: str) -> _Callable[..., nn.Module]:
    """The hub entry point of one registry name, documented from the registry's record."""
    info = _pretrained_info(name)

    def entry(
        pretrained: bool = True, progress: bool = True, weights_source: str | None = None
    ) -> nn.Module:
        return _entry(name, pretrained, progress, weights_source)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"""{info.title} (IN1K top-1 {info.imagenet_top1}, mean transfer log-odds \
{info.transfer_log_odds:.4f}).

    Weights: {info.license} (the authors'). ``fc`` keeps its random initialisation.

    Args:
        pretrained: Load the released weights; ``False`` gives an untrained resnet50.
        progress: Show a progress bar while downloading.
        weights_source: A local path or URL of the file, instead of the authors' server.
    """
    return entry


# One entry point per registry name (torch.hub lists the module's public callables).
trex_resnet50 = _entry_point("trex_resnet50")
trex_star_resnet50 = _entry_point("trex_star_resnet50")
trex_resnet50_repro = _entry_point("trex_resnet50_repro")
trex_star_resnet50_repro = _entry_point("trex_star_resnet50_repro")
