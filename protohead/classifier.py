"""Cosine-softmax classifier with learnable or memory-based (OCM) class weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from protohead import _validation as check
from protohead.memory import PrototypeMemoryBank

__all__ = ["PrototypeClassifier"]


class PrototypeClassifier(nn.Module):
    """Class logits for t-ReX: cosine softmax over prototypes (Sariyildiz et al., ICLR 2023).

    Three modes, chosen at construction:

    * ``memory`` given (OCM, Eq. 2, the paper's default): the class weights are the
      memory's L2-normalised class means, not learned;
      ``logits = normalize(z) @ prototypes.T / temperature``.
    * ``memory=None`` and a ``temperature`` ("plain" t-ReX, Eq. 1): a learnable ``(C, dim)``
      weight, normalised on the fly; ``logits = normalize(z) @ normalize(W).T / temperature``.
    * ``temperature=None``: a plain ``nn.Linear(dim, num_classes)`` with bias and no
      normalisation, the classic supervised baseline.

    With a temperature the logits lie in ``[-1/temperature, 1/temperature]``.

    Shapes: ``(b, dim) -> (b, num_classes)``.

    Args:
        dim: Input feature dimension, >= 1.
        num_classes: Number of classes, >= 1.
        temperature: Softmax temperature ``> 0`` (paper: 0.1), or ``None`` for a linear layer.
        memory: Optional :class:`PrototypeMemoryBank` providing the class weights; its ``dim``
            and ``num_classes`` must match. It becomes a submodule of this classifier.

    Raises:
        TypeError: If ``memory`` is not a :class:`PrototypeMemoryBank` or sizes are not ints.
        ValueError: If a size or the temperature is out of range, or the memory's sizes differ.

    Example:
        >>> clf = PrototypeClassifier(dim=8, num_classes=5)
        >>> logits = clf(torch.randn(3, 8))
        >>> logits.shape, bool(logits.abs().max() <= 10.0 + 1e-4)
        (torch.Size([3, 5]), True)
        >>> bank = PrototypeMemoryBank(dim=8, size=64, num_classes=5)
        >>> PrototypeClassifier(8, 5, memory=bank)(torch.randn(3, 8)).shape
        torch.Size([3, 5])
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        temperature: float | None = 0.1,
        memory: PrototypeMemoryBank | None = None,
    ) -> None:
        super().__init__()
        dim = check.integer("dim", dim, minimum=1)
        num_classes = check.integer("num_classes", num_classes, minimum=1)
        if temperature is not None:
            temperature = check.real_in("temperature", temperature, above=0)
        if memory is not None:
            if not isinstance(memory, PrototypeMemoryBank):
                raise TypeError(
                    f"memory must be a PrototypeMemoryBank or None, got {type(memory).__name__}"
                )
            if temperature is None:
                raise ValueError(
                    "temperature must be > 0 when memory is given (prototypes are unit vectors), "
                    "got None"
                )
            if memory.dim != dim or memory.num_classes != num_classes:
                raise ValueError(
                    f"memory must have dim={dim} and num_classes={num_classes}, got "
                    f"dim={memory.dim} and num_classes={memory.num_classes}"
                )
        self.dim = dim
        self.num_classes = num_classes
        self.temperature = None if temperature is None else float(temperature)
        self._tau = 1.0 if temperature is None else float(temperature)
        self.memory = memory
        self.weight: nn.Parameter | None = None
        self.linear: nn.Linear | None = None
        if temperature is None:
            self.linear = nn.Linear(dim, num_classes)
        elif memory is None:
            self.weight = nn.Parameter(torch.empty(num_classes, dim))
            nn.init.trunc_normal_(self.weight, std=0.02)

    @property
    def uses_memory(self) -> bool:
        """True when class weights come from the OCM memory."""
        return self.memory is not None

    def class_weights(self) -> Tensor:
        """Current unit-norm class weights ``(num_classes, dim)`` (cosine modes only)."""
        if self.memory is not None:
            return self.memory.prototypes()
        if self.weight is not None:
            return F.normalize(self.weight, dim=1)
        raise ValueError("class_weights() is undefined for temperature=None (linear mode)")

    def forward(self, z: Tensor, prototypes: Tensor | None = None) -> Tensor:
        """Compute logits ``(b, dim) -> (b, num_classes)``.

        Args:
            z: Features, ``(b, dim)``.
            prototypes: Optional precomputed unit-norm class weights ``(num_classes, dim)``
                to use instead of :meth:`class_weights`; lets a caller take the memory's
                prototypes before the memory is updated in the same step. Ignored in linear
                mode (``temperature=None``).

        Raises:
            TypeError: If ``z`` or ``prototypes`` is not a tensor.
            ValueError: If ``z`` or ``prototypes`` has the wrong shape.
        """
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a Tensor, got {type(z).__name__}")
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (b, {self.dim}), got {tuple(z.shape)}")
        if prototypes is not None and not isinstance(prototypes, Tensor):
            raise TypeError(f"prototypes must be a Tensor or None, got {type(prototypes).__name__}")
        if self.linear is not None:
            out: Tensor = self.linear(z)
            return out
        weights = self.class_weights() if prototypes is None else prototypes
        if weights.shape != (self.num_classes, self.dim):
            raise ValueError(
                f"prototypes must have shape ({self.num_classes}, {self.dim}), "
                f"got {tuple(weights.shape)}"
            )
        z = F.normalize(z, dim=1)
        return (z @ weights.to(z.dtype).T) / self._tau

    def extra_repr(self) -> str:
        mode = "ocm" if self.memory is not None else "linear" if self.linear else "cosine"
        return (
            f"dim={self.dim}, num_classes={self.num_classes}, temperature={self.temperature}, "
            f"mode={mode}"
        )
