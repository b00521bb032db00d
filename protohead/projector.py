"""The expendable MLP projector of t-ReX (Sariyildiz et al., ICLR 2023, Sec. 3)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from protohead import _validation as check

__all__ = ["Projector"]


class Projector(nn.Module):
    """MLP placed between the backbone and the classifier, discarded after training.

    The paper shows that this projector shields the backbone's features from over-specialising
    to the training classes; its depth sets the trade-off between training-task accuracy and
    transfer (3 hidden layers is t-ReX, 1 is t-ReX*).

    Layers, in order: optional L2-normalisation of the input, ``num_hidden_layers`` blocks of
    ``Linear(bias) -> norm_layer -> act_layer`` of width ``hidden_dim``, then a bias-free
    ``Linear`` bottleneck to ``out_dim``. Linear weights are drawn from a truncated normal with
    std 0.02 (truncated at ±2, as in timm/DINO); biases start at zero.

    Shapes: ``(b, in_dim) -> (b, out_dim)``.

    Args:
        in_dim: Input (backbone feature) dimension, >= 1.
        out_dim: Bottleneck dimension, >= 1. The paper uses 256.
        hidden_dim: Width of every hidden layer, >= 1. The paper uses 2048.
        num_hidden_layers: Number of hidden blocks, >= 0. ``0`` gives a single bias-free Linear.
        input_l2_norm: L2-normalise the input first (the paper's default).
        norm_layer: Factory ``(dim) -> nn.Module`` for the hidden normalisation; ``None``
            disables it.
        act_layer: Factory ``() -> nn.Module`` for the hidden activation.

    Raises:
        TypeError: If a size is not an int.
        ValueError: If a size is out of range.

    Example:
        >>> proj = Projector(512, num_hidden_layers=1, hidden_dim=64, out_dim=16)
        >>> proj(torch.randn(4, 512)).shape
        torch.Size([4, 16])
        >>> Projector(512, num_hidden_layers=0, out_dim=16).layers
        Sequential(
          (0): Linear(in_features=512, out_features=16, bias=False)
        )
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        hidden_dim: int = 2048,
        num_hidden_layers: int = 3,
        input_l2_norm: bool = True,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm1d,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.in_dim = check.integer("in_dim", in_dim, minimum=1)
        self.out_dim = check.integer("out_dim", out_dim, minimum=1)
        self.hidden_dim = check.integer("hidden_dim", hidden_dim, minimum=1)
        self.num_hidden_layers = check.integer("num_hidden_layers", num_hidden_layers, minimum=0)
        self.input_l2_norm = bool(input_l2_norm)

        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_hidden_layers):
            layers.append(nn.Linear(width, hidden_dim))
            if norm_layer is not None:
                layers.append(norm_layer(hidden_dim))
            layers.append(act_layer())
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=False))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise Linear layers (trunc-normal std 0.02, zero bias) and norm layers."""
        for module in self.layers:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """Project features: ``(b, in_dim) -> (b, out_dim)``."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must have shape (b, {self.in_dim}), got {tuple(x.shape)}")
        if self.input_l2_norm:
            x = F.normalize(x, dim=1)
        out: Tensor = self.layers(x)
        return out

    def extra_repr(self) -> str:
        return f"input_l2_norm={self.input_l2_norm}"
