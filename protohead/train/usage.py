"""Usage errors of ``protohead-train`` and the checks of its flags that need no data or model.

The command's policy for bad input (a wrong flag, a missing directory, a checkpoint of another
run): one line on stderr, ``protohead-train: error: ...``, exit status 2, no traceback.
Checks anywhere in the trainer raise :class:`UsageError`; ``cli()`` in
:mod:`protohead.train.trainer` is the one place that turns it into that line (``--debug``
re-raises it with its traceback). :func:`check_args` runs before any process group, dataset or
model is built, so a typo costs seconds, not a scan of ImageNet.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
from pathlib import Path

import torch
import torchvision.models as tv_models

__all__ = ["UsageError", "check_arch", "check_args", "tensorboard_available"]

# Smallest allowed value of the integer flags (None, where allowed, means "not set").
_MINIMUM = {
    "epochs": 1,
    "batch_size": 1,
    "workers": 0,
    "prefetch_factor": 1,
    "print_freq": 1,
    "save_every": 0,
    "max_steps_per_epoch": 1,
    "bn_recalibration_batches": 0,
    "threads": 1,
    "decode_max_side": 0,
}

# Allowed range [low, high] of the float flags (high None: no upper bound).
_RANGE = {
    "lr": (0.0, None),
    "final_lr": (0.0, None),
    "warmup_epochs": (0.0, None),
    "weight_decay": (0.0, None),
    "momentum": (0.0, 1.0),
    "label_smoothing": (0.0, 1.0),
}


class UsageError(Exception):
    """Bad input to ``protohead-train``; the message says what is wrong and how to fix it.

    Example:
        >>> str(UsageError("--epochs must be >= 1, got 0"))
        '--epochs must be >= 1, got 0'
    """


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_arch(arch: str) -> None:
    """Checks that ``--arch`` names a torchvision classification model or ``timm:NAME``.

    Raises:
        UsageError: Naming the closest torchvision names, or asking for timm.

    Example:
        >>> check_arch("resnet50")
        >>> check_arch("resnet-50")
        Traceback (most recent call last):
        ...
        protohead.train.usage.UsageError: --arch 'resnet-50' is not a torchvision classification model (did you mean resnet50?); see torchvision.models.list_models(module=torchvision.models), or use timm:NAME
    """  # noqa: E501
    if arch.startswith("timm:"):
        if importlib.util.find_spec("timm") is None:
            raise UsageError(f"--arch {arch} needs timm: pip install 'protohead[timm]'")
        timm = importlib.import_module("timm")
        if not timm.is_model(arch[len("timm:") :]):
            raise UsageError(f"--arch {arch!r} is not a timm model; see timm.list_models()")
        return
    names = tv_models.list_models(module=tv_models)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"--arch {arch!r} is not a torchvision classification model{hint}; see "
            "torchvision.models.list_models(module=torchvision.models), or use timm:NAME"
        )


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` imports (it needs the ``tensorboard`` package).

    Example:
        >>> isinstance(tensorboard_available(), bool)
        True
    """
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        return False
    return True


def check_args(args: argparse.Namespace) -> None:
    """Checks the flags that can be checked before any data or model is built.

    The data source and the ``train/``/``val/`` layout of ``--data-dir``, the ranges of the
    numeric flags, ``--device``, ``--arch`` and an explicit ``--tensorboard``. Checks that need the
    data (class folders, the number of images) or a checkpoint run later, with the same error.

    Raises:
        UsageError: For the first problem found.

    Example:
        >>> from protohead.train.args import get_args_parser
        >>> check_args(get_args_parser().parse_args(["--dataset", "fake", "--device", "cpu"]))
        >>> check_args(get_args_parser().parse_args(["--device", "cpu"]))
        Traceback (most recent call last):
        ...
        protohead.train.usage.UsageError: give --dataset NAME or --data-dir PATH (ImageFolder train/ and val/)
    """  # noqa: E501
    if args.dataset is None and args.data_dir is None:
        raise UsageError("give --dataset NAME or --data-dir PATH (ImageFolder train/ and val/)")
    if args.data_dir is not None:
        root = Path(args.data_dir)
        if not root.is_dir():
            raise UsageError(f"--data-dir {str(root)!r} does not exist")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise UsageError(
                    f"--data-dir {str(root)!r} has no {split}/ folder; it must hold train/ and "
                    "val/, each with one sub-folder of images per class (the ImageNet layout)"
                )
    if args.decode == "batched" and args.data_dir is None:
        raise UsageError(
            "--decode batched decodes image files: give --data-dir (built-in datasets hold "
            "pixels, use --gpu-aug for them)"
        )
    for name, minimum in _MINIMUM.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise UsageError(f"{_flag(name)} must be >= {minimum}, got {value}")
    for name, (low, high) in _RANGE.items():
        value = getattr(args, name, None)
        # "not low <= value" also catches NaN, which every comparison fails.
        if value is not None and not (low <= value and (high is None or value <= high)):
            allowed = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            raise UsageError(f"{_flag(name)} must be {allowed}, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(
            f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {args.device} needs a CUDA GPU, and torch sees none here; pass --device cpu"
        )
    check_arch(args.arch)
    if getattr(args, "tensorboard", None) is True and not tensorboard_available():
        raise UsageError(
            "--tensorboard needs the tensorboard package: pip install 'protohead[tensorboard]' "
            "(or drop the flag; metrics.jsonl has the same numbers)"
        )
