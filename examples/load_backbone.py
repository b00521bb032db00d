"""Load the ``backbone.pth`` written by ``protohead-train`` into a stock torchvision model.

t-ReX keeps only the backbone after training (the projector and the classifier are discarded,
Sariyildiz et al., ICLR 2023). ``backbone.pth`` is a plain state_dict with the stock model's key
names and no classifier, so it loads into ``torchvision.models.get_model(arch)`` with only the
classifier keys missing; put a new head on it for your task, or use it as a feature extractor::

    python examples/load_backbone.py runs/trex/backbone.pth --arch resnet50
    python examples/load_backbone.py runs/fmnist/backbone.pth --arch resnet18 --image-size 28

Models trained with ``--small-input-stem`` need the same stem before loading (``--small-input-stem``
here). For the transfer-evaluation protocol use ``python -m protohead.evaluation``.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn


def load_backbone(path: str, arch: str, num_classes: int, small_input_stem: bool) -> nn.Module:
    """The stock ``arch`` with the trained backbone and a fresh ``num_classes`` classifier."""
    model = torchvision.models.get_model(arch, num_classes=num_classes)
    if small_input_stem:
        _small_stem(model, arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} does not fit {arch}: unexpected keys {result.unexpected_keys}")
    print(f"loaded {len(state)} tensors; left at their initial values: {result.missing_keys}")
    return model


def _small_stem(model: nn.Module, arch: str) -> None:
    """The 3x3 stride-1 stem that protohead.BackboneAdapter(small_input_stem=True) installs."""
    if isinstance(model, torchvision.models.ResNet):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif isinstance(model, torchvision.models.ConvNeXt):
        stem = model.features[0]
        stem[0] = nn.Conv2d(3, stem[0].out_channels, 3, stride=1, padding=1)
    else:
        raise SystemExit(f"--small-input-stem exists for ResNet and ConvNeXt models, not {arch}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="backbone.pth from protohead-train")
    parser.add_argument("--arch", default="resnet50", help="the --arch used for training")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the new head")
    parser.add_argument("--small-input-stem", action="store_true", help="trained with it")
    parser.add_argument("--image-size", type=int, default=224, help="for the demo forward pass")
    args = parser.parse_args()

    model = load_backbone(args.weights, args.arch, args.num_classes, args.small_input_stem)
    model.eval()
    images = torch.randn(2, 3, args.image_size, args.image_size)
    with torch.no_grad():
        logits = model(images)
        head = model.fc if hasattr(model, "fc") else None
        if head is not None:  # ResNet-style: drop the head to get the pooled features
            model.fc = nn.Identity()
            features = model(images)
            model.fc = head
            print(f"features {tuple(features.shape)}, logits {tuple(logits.shape)}")
        else:
            print(f"logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
