"""Command line of the trainer (``protohead-train``): its flags and how they resolve to a preset.

Every :class:`~protohead.presets.TReXPreset` field that users tune has a flag of the same name
(``--temperature``, ``--memory-size``, ...); :func:`resolve_preset` applies, in order, the
``--preset``, ``--small-images`` and the flags given on the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from protohead import PRESETS, get_preset
from protohead._cli import OneLineParser
from protohead.data import DATASETS, dataset_info
from protohead.data.class_subset import parse_classes
from protohead.presets import TReXPreset
from protohead.train.small_images import small_image_preset

__all__ = ["PRESET_FLAGS", "get_args_parser", "resolve_preset"]


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


_AUG = "stronger augmentation helps transfer, may cost training-task accuracy"
PRESET_FLAGS: dict[str, tuple[Any, str]] = {
    "projector_hidden_layers": (
        _int_or_none,
        "projector depth or 'none'; deeper shields the backbone (transfer), trains slower",
    ),
    "projector_hidden_dim": (int, "projector width; wider helps transfer, costs memory/time"),
    "projector_out_dim": (int, "projector bottleneck; paper: 256, smaller saves memory"),
    "projector_input_l2_norm": (bool, "L2-normalise the projector input; stabilises training"),
    "temperature": (
        _float_or_none,
        "cosine-softmax temperature or 'none' (linear); lower sharpens, too low is unstable",
    ),
    "memory_size": (
        int,
        "OCM memory slots, 0 learns class weights; larger is smoother but staler",
    ),
    "ema_momentum": (float, "teacher EMA momentum; higher is smoother but lags short runs"),
    "num_global_crops": (int, "global crops per image; each also costs a teacher forward"),
    "num_local_crops": (int, "local crops per image; more help transfer, each costs a pass"),
    "global_crop_size": (int, "global crop side in px; smaller is faster, less accurate"),
    "local_crop_size": (int, "local crop side in px; smaller is cheaper, less informative"),
    "global_crop_scale": (tuple, "global crop area range; lower LO augments more, fits less"),
    "local_crop_scale": (tuple, "local crop area range; tiny crops of small images say little"),
    "color_jitter_p": (float, f"probability of colour jitter; {_AUG}"),
    "grayscale_p": (float, f"probability of grayscale; {_AUG}"),
    "global_blur_p": (float, f"probability of blur on global crops; {_AUG}"),
    "local_blur_p": (float, f"probability of blur on local crops; {_AUG}"),
    "global_solarize_p": (float, f"probability of solarize on global crops; {_AUG}"),
}
"""Preset fields with a flag of the same name (``memory_size`` -> ``--memory-size``): field ->
(argument type, one-line trade-off shown in ``--help``)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` only where the help text does not describe the default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line flags; every preset value can be overridden by its own flag.

    Args:
        add_help: Add ``-h/--help`` (False to embed the flags in another parser).

    Returns:
        The parser of ``protohead-train``; pass its result to :func:`resolve_preset`.

    Example:
        >>> args = get_args_parser().parse_args(["--dataset", "cifar10", "--preset", "trex-star"])
        >>> args.preset, args.epochs, args.batch_size
        ('trex-star', 100, 64)
    """
    parser = OneLineParser(
        prog="protohead-train",
        description="t-ReX / t-ReX* training (Sariyildiz et al., ICLR 2023)",
        add_help=add_help,
        formatter_class=_HelpFormatter,
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default=None,
        help="built-in dataset; small ones make quick runs but say little about ImageNet transfer",
    )
    source.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="ImageFolder root with train/ and val/ (ImageNet layout); the paper's setting",
    )
    data.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where built-in datasets are read/downloaded (default: Debian dir, then ./data)",
    )
    data.add_argument(
        "--classes",
        type=parse_classes,
        default=None,
        help="train on these class ids only, relabelled 0..k-1, e.g. 0-4 (the seen half of a "
        "concept-generalisation split; see examples/eval_demo.py)",
    )
    data.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip and count unreadable files instead of stopping; hides data problems",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=8,
        help="DataLoader workers per process; more feed the GPU faster but cost RAM and cores",
    )
    data.add_argument(
        "--prefetch-factor",
        type=int,
        default=4,
        help="batches each worker prepares ahead; smooths stalls at the cost of memory",
    )
    data.add_argument(
        "--gpu-aug",
        "--batched-aug",
        dest="gpu_aug",
        action="store_true",
        help="batched multi-crop on the training device (BatchedMultiCrop, also on CPU): workers "
        "only decode; much faster, crops differ from PIL's within small tolerances",
    )
    data.add_argument(
        "--gpu-aug-fuse",
        choices=("auto", "on", "off"),
        default="auto",
        help="with --gpu-aug, compile the augmenter's colour ops into fused kernels "
        "(BatchedMultiCrop(fuse=True)); auto: on for CUDA (first batches compile), off elsewhere",
    )
    data.add_argument(
        "--decode",
        choices=("pil", "batched"),
        default="pil",
        help="where training images are decoded: pil in the DataLoader workers; batched has "
        "the workers read file bytes only and decodes whole batches on the training device "
        "(nvJPEG on CUDA, PIL for non-JPEGs), then crops them there as --gpu-aug does; "
        "needs --data-dir",
    )
    data.add_argument(
        "--decode-max-side",
        type=int,
        default=1024,
        help="with --decode batched, shrink decoded images whose longer side is larger to this "
        "side before cropping, bounding the padded batch's memory; 0 keeps full size",
    )
    data.add_argument(
        "--val-crop-size",
        type=int,
        default=None,
        help="validation center crop (default: the global crop size); larger is slower",
    )
    data.add_argument(
        "--val-resize-size",
        type=int,
        default=None,
        help="validation resize before the crop (default: crop * 256 / 224, or the crop size "
        "with --small-images); a larger resize zooms in",
    )
    data.add_argument(
        "--fake-size",
        type=int,
        nargs=2,
        default=(256, 64),
        metavar=("TRAIN", "VAL"),
        help="sizes of --dataset fake; only for smoke runs",
    )
    data.add_argument(
        "--fake-image-size", type=int, default=32, help="side of --dataset fake images"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch",
        default="resnet50",
        help="torchvision model name or timm:NAME; bigger backbones transfer better but cost more",
    )
    model.add_argument(
        "--small-input-stem",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="3x3 stride-1 stem without max-pool for 28-32 px images: more accurate, ~4-16x "
        "more compute (ResNet/ConvNeXt only)",
    )
    model.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="trex",
        help="paper configuration: trex transfers best, trex-star is best on the training "
        "classes, baseline is plain supervised",
    )
    model.add_argument(
        "--small-images",
        action="store_true",
        help="rescale the preset to the dataset's 28-32 px images and short runs "
        "(protohead.train.small_images) and evaluate whole images; explicit flags still win",
    )
    model.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="start the backbone from these weights instead of random ones: a backbone.pth "
        "(stock torchvision/timm layout, classifier keys optional) or a training checkpoint; "
        "ignored when resuming",
    )
    model.add_argument(
        "--memory-init",
        choices=("random", "empty"),
        default="random",
        help="initial OCM memory; random gives every class a prototype from step 1, empty "
        "suits tiny memories",
    )
    model.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SyncBatchNorm across processes when distributed; exact batch stats, some "
        "communication",
    )

    preset = parser.add_argument_group(
        "preset overrides (default: the value of --preset, after --small-images)"
    )
    for field, (kind, text) in PRESET_FLAGS.items():
        # SUPPRESS: only flags given on the command line become attributes (needed because
        # "none" is a valid value for the projector depth and the temperature).
        extra: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text}
        if kind is bool:
            extra["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            extra.update(type=float, nargs=2, metavar=("LO", "HI"))
        else:
            extra["type"] = kind
        preset.add_argument(f"--{field.replace('_', '-')}", **extra)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--epochs", type=int, default=100, help="training epochs; paper: 100, longer is better"
    )
    optim.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per process (paper: 64 x 4 GPUs); larger is faster per image, may need "
        "more warm-up",
    )
    optim.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="learning rate at a global batch of 256, scaled linearly; too high diverges",
    )
    optim.add_argument(
        "--warmup-epochs",
        type=float,
        default=10.0,
        help="linear warm-up from 0; longer is safer for large batches, slower to start",
    )
    optim.add_argument(
        "--final-lr", type=float, default=1e-6, help="learning rate at the end of the cosine"
    )
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument(
        "--optimizer-impl",
        choices=("auto", "fused", "foreach", "for-loop"),
        default="auto",
        help="SGD implementation: fused (one kernel for all parameters) or foreach (a few "
        "multi-tensor kernels) give the same update as the for-loop; auto = fused on CUDA, "
        "foreach elsewhere",
    )
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=1e-4,
        help="decay on weights only (not biases/norms); more regularises, too much underfits",
    )
    optim.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="label smoothing; paper: 0 (it hurts transfer)",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--bn-recalibration-batches",
        type=int,
        default=20,
        help="batches of training images (eval transform) that re-estimate the student's "
        "BatchNorm statistics before each evaluation and the export; multi-crop skews the "
        "running averages towards local crops, 0 keeps them",
    )
    run.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu; under torchrun each process uses cuda:LOCAL_RANK",
    )
    run.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "none"),
        default="auto",
        help="autocast on GPU: auto = bf16 if supported else fp16 + GradScaler; none is slower",
    )
    run.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="NHWC tensors; faster convolutions on GPUs and recent CPUs",
    )
    run.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TF32 matmuls/convolutions on Ampere+ GPUs; faster, slightly less precise",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the student and the teacher (and, with --fused-memory auto, the "
        "memory step); faster steps after minutes of compiling",
    )
    run.add_argument(
        "--fused-memory",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the OCM memory step torch.compile-d (TReX(fused_memory=True)): a dozen fused "
        "kernels instead of ~35 launches per step, same state, seconds of compiling; auto = on "
        "for CUDA or with --compile, off otherwise",
    )
    run.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune"),
        default="default",
        help="torch.compile mode with --compile; reduce-overhead replays CUDA graphs (static "
        "shapes: every step has the same crops), max-autotune also tunes kernels (longest "
        "compile)",
    )
    run.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's)"
    )
    run.add_argument("--seed", type=int, default=0, help="random seed (offset per rank)")
    run.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs/trex"),
        help="checkpoints, metrics.jsonl, backbone.pth (and TensorBoard logs) go here",
    )
    run.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TensorBoard logs in <output-dir>/tensorboard (default: on when the tensorboard "
        "package is installed, pip install 'protohead[tensorboard]')",
    )
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="checkpoint to resume (default: <output-dir>/checkpoint.pth if it exists)",
    )
    run.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="also keep checkpoint_epoch<N>.pth every N epochs (0: never); costs disk",
    )
    run.add_argument(
        "--print-freq",
        type=int,
        default=50,
        help="steps between log lines (and NaN checks); lower syncs the GPU more often",
    )
    run.add_argument(
        "--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke runs)"
    )
    run.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of usage errors (for bug reports)",
    )
    return parser


def resolve_preset(args: argparse.Namespace) -> TReXPreset:
    """The ``--preset`` configuration after ``--small-images`` and every override flag.

    Args:
        args: Parsed flags of :func:`get_args_parser`.

    Returns:
        The preset, with only the flags given on the command line overriding it.

    Example:
        >>> parser = get_args_parser()
        >>> preset = resolve_preset(parser.parse_args(["--preset", "trex", "--memory-size", "0"]))
        >>> preset.memory_size, preset.temperature, preset.num_local_crops
        (0, 0.1, 8)
    """
    preset = get_preset(args.preset)
    if args.small_images:
        size = dataset_info(args.dataset).image_size
        if size is None:  # folders and FakeData: the requested crop size, else the fake size
            size = getattr(args, "global_crop_size", args.fake_image_size)
        preset = small_image_preset(preset, size)
    # Override flags default to argparse.SUPPRESS, so only flags given on the command line
    # are attributes (needed because "none" is a valid value for two of them).
    overrides = {field: getattr(args, field) for field in PRESET_FLAGS if hasattr(args, field)}
    for field in ("global_crop_scale", "local_crop_scale"):
        if field in overrides:
            overrides[field] = tuple(overrides[field])
    return preset.replace(**overrides)
