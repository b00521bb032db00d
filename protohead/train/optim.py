"""The optimisation recipe of t-ReX: SGD parameter groups and a warm-up + cosine learning rate.

Sariyildiz et al. (ICLR 2023, App. B) train with SGD (momentum 0.9), a learning rate of
``0.1 * global_batch / 256``, a linear warm-up from 0 over the first 10 epochs then a cosine
decay to ``1e-6``, updated every iteration, and a weight decay of ``1e-4`` applied to weights
only (no decay on biases or any other 1-D parameter such as normalisation scales).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from protohead import _validation as check

__all__ = ["WarmupCosineLR", "lr_at", "param_groups", "scaled_lr", "sgd_implementation"]


def scaled_lr(base_lr: float, global_batch_size: int, reference_batch_size: int = 256) -> float:
    """The linear scaling rule: ``base_lr * global_batch_size / reference_batch_size``.

    Args:
        base_lr: Learning rate at the reference batch size, >= 0 (paper: 0.1).
        global_batch_size: Images per optimiser step summed over all processes, >= 1.
        reference_batch_size: Batch size at which ``base_lr`` applies, >= 1 (paper: 256).

    Raises:
        TypeError: If ``base_lr`` is not a number.
        ValueError: If an argument is out of range.

    Example:
        >>> scaled_lr(0.1, 64 * 4)  # 4 GPUs x 64 images, the paper's ImageNet setting
        0.1
    """
    lr = check.real_in("base_lr", base_lr, at_least=0)
    batch = check.integer("global_batch_size", global_batch_size, minimum=1)
    reference = check.integer("reference_batch_size", reference_batch_size, minimum=1)
    return lr * batch / reference


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a non-decayed group.

    Parameters with ``ndim <= 1`` (biases, BatchNorm/LayerNorm scales and shifts, scalars) get
    no weight decay; all others get ``weight_decay``. Frozen parameters (``requires_grad`` off,
    e.g. an EMA teacher) are left out. Parameter order follows ``model.parameters()``, so the
    groups are the same on every process. Empty groups are dropped.

    Args:
        model: The module to optimise; it is not modified.
        weight_decay: Decay of the weight matrices / kernels, >= 0 (paper: 1e-4).

    Returns:
        Groups for a ``torch.optim`` optimiser: ``[{"params": [...], "weight_decay": wd},
        {"params": [...], "weight_decay": 0.0}]``.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``weight_decay`` not a number.
        ValueError: If ``weight_decay`` is negative or not finite.

    Example:
        >>> groups = param_groups(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), 1e-4)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.0001), (3, 0.0)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    decay = check.real_in("weight_decay", weight_decay, at_least=0)
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (plain if param.ndim <= 1 else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_at(
    step: int, *, base_lr: float, total_steps: int, warmup_steps: int, final_lr: float = 1e-6
) -> float:
    """Learning rate of iteration ``step``: linear warm-up from 0, then cosine to ``final_lr``.

    ``lr = base_lr * step / warmup_steps`` for ``step < warmup_steps``, then
    ``final_lr + (base_lr - final_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)``; ``final_lr`` from
    ``total_steps`` on.

    Args:
        step: Zero-based iteration index, >= 0.
        base_lr: Peak learning rate, >= 0.
        total_steps: Length of the schedule in iterations, >= 1.
        warmup_steps: Warm-up length, in ``[0, total_steps]``.
        final_lr: Learning rate at the end of the cosine, in ``[0, base_lr]`` (paper: 1e-6).

    Raises:
        TypeError: If a rate is not a number.
        ValueError: If an argument is out of range.

    Example:
        >>> [round(lr_at(s, base_lr=1.0, total_steps=10, warmup_steps=2, final_lr=0.0), 3)
        ...  for s in (0, 1, 2, 6, 10)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    step = check.integer("step", step, minimum=0)
    peak = check.real_in("base_lr", base_lr, at_least=0)
    total = check.integer("total_steps", total_steps, minimum=1)
    warmup = check.integer("warmup_steps", warmup_steps, minimum=0)
    floor = check.real_in("final_lr", final_lr, at_least=0)
    if warmup > total:
        raise ValueError(f"warmup_steps must be <= total_steps={total}, got {warmup}")
    if floor > peak:
        raise ValueError(f"final_lr must be <= base_lr={peak}, got {floor}")
    if step < warmup:
        return peak * step / warmup
    if step >= total:
        return floor
    progress = (step - warmup) / (total - warmup)
    return floor + (peak - floor) * (1.0 + math.cos(math.pi * progress)) / 2.0


class WarmupCosineLR:
    """Sets an optimiser's learning rate from :func:`lr_at` before every iteration.

    Call :meth:`step` once per iteration *before* ``optimizer.step()``: it writes
    ``lr_at(n)`` into every parameter group (``n`` = number of earlier calls) and returns it.
    :meth:`state_dict` saves the iteration counter with the schedule it counts in, so a resumed
    run continues the schedule exactly, and a resume under another peak rate (other global
    batch size or base rate) fails instead of silently bending the curve.

    Args:
        optimizer: The optimiser whose groups receive the rate (not otherwise touched).
        base_lr: Peak learning rate, >= 0.
        total_steps: Schedule length in iterations, >= 1.
        warmup_steps: Warm-up length, in ``[0, total_steps]``.
        final_lr: Final rate, in ``[0, base_lr]``.

    Raises:
        TypeError: If ``optimizer`` is not a ``torch.optim.Optimizer``.
        ValueError: If the schedule arguments are out of range (see :func:`lr_at`).

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=123.0)
        >>> sched = WarmupCosineLR(opt, base_lr=1.0, total_steps=4, warmup_steps=2)
        >>> [round(sched.step(), 3) for _ in range(4)], sched.state_dict()["num_steps"]
        ([0.0, 0.5, 1.0, 0.5], 4)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        base_lr: float,
        total_steps: int,
        warmup_steps: int,
        final_lr: float = 1e-6,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        # Validates every schedule argument up front, so a bad one fails here, not mid-run.
        lr_at(
            0,
            base_lr=base_lr,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            final_lr=final_lr,
        )
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.final_lr = float(final_lr)
        self.num_steps = 0

    def lr(self, step: int) -> float:
        """The rate of iteration ``step`` under this schedule."""
        return lr_at(
            step,
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            final_lr=self.final_lr,
        )

    def step(self) -> float:
        """Set the rate of the next iteration in every group and return it."""
        lr = self.lr(self.num_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.num_steps += 1
        return lr

    def state_dict(self) -> dict[str, float | int]:
        """The iteration counter and the schedule it counts in."""
        return {
            "num_steps": self.num_steps,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_lr": self.final_lr,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the iteration counter.

        The peak and final rates saved with it (absent in states from older versions) must
        equal this schedule's: a different peak means another global batch size, number of
        processes or base rate, where the saved count would land on a wrong curve. The length
        may differ: a run extended with more epochs continues from the same step.

        Raises:
            ValueError: If ``state`` has no non-negative int ``"num_steps"``, or its peak or
                final rate differs from this schedule's; nothing is changed then.
        """
        value = state.get("num_steps") if isinstance(state, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"state must hold an int 'num_steps' >= 0, got {state!r}")
        mine = {"base_lr": self.base_lr, "final_lr": self.final_lr}
        saved = {key: state[key] for key in mine if key in state}
        differ = {key: (saved[key], mine[key]) for key in saved if saved[key] != mine[key]}
        if differ:
            detail = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in differ.items())
            raise ValueError(
                f"state was saved under another schedule ({detail}); resume with the same "
                "global batch size (batch size x processes) and learning rate, or start a new run"
            )
        self.num_steps = value


def sgd_implementation(choice: str, device: torch.device) -> dict[str, bool]:
    """``torch.optim.SGD`` keyword arguments for ``--optimizer-impl`` on ``device``.

    All three give the same update; they differ in kernel launches per step (one per parameter
    tensor for the for-loop, which dominates the optimiser's cost on a GPU).

    Example:
        >>> sgd_implementation("auto", torch.device("cpu"))
        {'foreach': True, 'fused': False}
    """
    if choice == "auto":
        choice = "fused" if device.type == "cuda" else "foreach"
    return {"foreach": choice == "foreach", "fused": choice == "fused"}
