"""Training wing: the t-ReX trainer and the pieces of a training loop around the core blocks.

- the trainer (:mod:`~protohead.train.trainer`: ``get_args_parser``, ``train_one_epoch``,
  ``evaluate``, ``main``; command ``protohead-train`` or ``python -m protohead.train``), its
  flags (:mod:`~protohead.train.args`), loaders (:mod:`~protohead.train.loaders`) and run
  directory (:mod:`~protohead.train.run_dir`);
- the checkpoint format and random-generator state (:mod:`~protohead.train.checkpoint`), the
  one schema the evaluation reads training checkpoints through;
- learning-rate schedule and parameter groups (:mod:`~protohead.train.optim`), process-group
  launch (:mod:`~protohead.train.launch`), samplers and per-sample seeding
  (:mod:`~protohead.train.samplers`, :mod:`~protohead.train.seeding`), BatchNorm
  recalibration (:mod:`~protohead.train.batchnorm`), small-image presets
  (:mod:`~protohead.train.small_images`).

Nothing outside this wing imports it, except the evaluation reading checkpoints through
:mod:`protohead.train.checkpoint`. The trainer itself is imported lazily: importing
``protohead.train`` (or the checkpoint schema) does not build its data or model code.
"""

from __future__ import annotations

import importlib
from typing import Any

from protohead.train.batchnorm import recalibrate_batchnorm
from protohead.train.optim import WarmupCosineLR, lr_at, param_groups, scaled_lr
from protohead.train.small_images import small_image_preset

__all__ = [
    "WarmupCosineLR",
    "evaluate",
    "get_args_parser",
    "lr_at",
    "main",
    "param_groups",
    "recalibrate_batchnorm",
    "scaled_lr",
    "small_image_preset",
    "train_one_epoch",
]

_TRAINER = frozenset({"evaluate", "get_args_parser", "main", "train_one_epoch"})


def __getattr__(name: str) -> Any:
    if name in _TRAINER:
        return getattr(importlib.import_module("protohead.train.trainer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
