"""Arguments of ``python -m protohead.evaluation``: the parser, its help, and the paths to check.

Every flag has a help text and ``--help`` shows each default once: either the formatter appends
``(default: X)``, or, for defaults that depend on the model (``--crop``, ``--mean``...), the help
text says where the value comes from. Usage errors print one line (``prog: error: message``) and
exit with status 2, without argparse's usage block.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from protohead._cli import OneLineParser
from protohead.data.class_subset import parse_classes
from protohead.evaluation.datasets import DATASET_GROUPS, DATASETS
from protohead.evaluation.features import IMAGENET_MEAN, IMAGENET_STD
from protohead.pretrained import list_pretrained

__all__ = ["build_parser", "existing_paths"]


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "protohead", "features")


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already speaks of its default,
    or the default is empty (``None``, ``False``, ``[]``), i.e. there is nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or default == [] or default == ()
        if "default" in text or empty or default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _model_flags(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (exactly one of --arch, --checkpoint, --pretrained)")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--arch",
        help="stock torchvision model or timm:<name>, e.g. resnet50; its weights come from "
        "--weights (default: random initialisation)",
    )
    source.add_argument(
        "--checkpoint",
        help="protohead training checkpoint: architecture, stem, preset, training crop size "
        "and normalisation are read from it",
    )
    source.add_argument(
        "--pretrained",
        choices=list_pretrained(),
        metavar="NAME",
        help="released t-ReX ResNet-50 weights by name, downloaded into the torch.hub cache "
        f"(CC BY-NC-SA 4.0, non-commercial); one of {', '.join(list_pretrained())}",
    )
    model.add_argument(
        "--weights",
        help="backbone.pth state_dict for --arch (a training checkpoint goes to --checkpoint)",
    )
    model.add_argument(
        "--small-input-stem",
        action="store_true",
        help="build --arch with the 3x3 stride-1 stem for 28-32 px images (the weights must "
        "have it)",
    )
    model.add_argument(
        "--name", help="model label in the report (default: architecture, preset, file name)"
    )
    model.add_argument(
        "--train-top1",
        type=float,
        help="training-task top-1 in [0, 1], for the report and plot (default: read from a "
        "--checkpoint)",
    )


def _data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("datasets")
    groups = ", ".join(
        f"'{name}' = {' '.join(members)}" for name, members in DATASET_GROUPS.items()
    )
    data.add_argument(
        "--dataset",
        action="append",
        choices=[*sorted(DATASETS), *DATASET_GROUPS],
        help=f"registered dataset or group, repeatable; {groups} (default: paper)",
    )
    data.add_argument(
        "--image-folder",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "TRAIN_DIR", "TEST_DIR"),
        help="an ImageFolder pair (class/image layout), repeatable",
    )
    data.add_argument(
        "--image-list",
        nargs=4,
        action="append",
        default=[],
        metavar=("NAME", "ROOT", "TRAIN_LIST", "TEST_LIST"),
        help="an image-list pair ('relative/path label' lines, e.g. an ImageNet-CoG level), "
        "repeatable",
    )
    data.add_argument(
        "--data-root",
        help="root of the registered datasets, one sub-folder each (default: ./data; a root "
        "given here must exist)",
    )
    data.add_argument("--download", action="store_true", help="let torchvision download")
    data.add_argument("--split-seed", type=int, default=0, help="seed of EuroSAT's test split")
    data.add_argument(
        "--sun397-lists",
        nargs=2,
        metavar=("TRAIN", "TEST"),
        help="SUN397 partition lists, e.g. Training_01.txt Testing_01.txt; relative to "
        "DATA_ROOT/SUN397",
    )
    for year in ("2018", "2019"):
        data.add_argument(
            f"--inat{year}-root",
            help=f"folder holding train{year}.json, val{year}.json and the images they name "
            f"(default: DATA_ROOT/inat{year})",
        )
    data.add_argument(
        "--fashion-mnist-root",
        help="Fashion-MNIST IDX folder (default: the Debian package's, else a download)",
    )
    data.add_argument(
        "--fashion-mnist-classes",
        type=parse_classes,
        help="Fashion-MNIST class subset, relabelled in order, e.g. 5-9 or 0,2,3,4,6 "
        "(default: all 10)",
    )
    data.add_argument(
        "--max-per-class",
        type=int,
        help="keep the first N images per class of each Fashion-MNIST split (default: all)",
    )
    data.add_argument("--fake-trainval", type=int, default=200, help="'fake' trainval images")
    data.add_argument("--fake-test", type=int, default=100, help="'fake' test images")
    data.add_argument("--fake-classes", type=int, default=10, help="'fake' classes")
    data.add_argument("--fake-image-size", type=int, default=32, help="'fake' image side (px)")


def _feature_flags(parser: argparse.ArgumentParser) -> None:
    feats = parser.add_argument_group("features (the input follows the model unless given)")
    feats.add_argument(
        "--crop",
        type=int,
        help="centre-crop side in px (default: a --checkpoint's training crop size, else 224)",
    )
    feats.add_argument(
        "--resize", type=int, help="shorter side before the centre crop (default: = --crop)"
    )
    feats.add_argument(
        "--interpolation",
        default="bicubic",
        choices=("bicubic", "bilinear", "nearest"),
        help="resize interpolation",
    )
    for flag, imagenet in (("--mean", IMAGENET_MEAN), ("--std", IMAGENET_STD)):
        feats.add_argument(
            flag,
            type=float,
            nargs=3,
            metavar=flag[2:].upper(),
            help=f"normalisation {flag[2:]}, with the other of --mean/--std (default: a "
            f"--checkpoint's training statistics, else ImageNet's {list(imagenet)})",
        )
    feats.add_argument("--batch-size", type=int, default=128, help="extraction batch size")
    feats.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    feats.add_argument(
        "--device", default="auto", help="device of extraction and fits; auto = CUDA if any"
    )
    feats.add_argument("--cache-dir", default=_default_cache_dir(), help="feature cache directory")
    feats.add_argument("--no-cache", action="store_true", help="always extract, never cache")
    feats.add_argument("--no-progress", action="store_true", help="no progress bars")


def _probe_flags(parser: argparse.ArgumentParser) -> None:
    search = parser.add_argument_group("linear probe")
    search.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the validation splits"
    )
    search.add_argument(
        "--val-fraction", type=float, default=0.2, help="validation share of each class"
    )
    search.add_argument("--c-min", type=float, default=1e-6, help="smallest C searched")
    search.add_argument("--c-max", type=float, default=1e5, help="largest C searched")
    search.add_argument("--grid-points", type=int, default=12, help="log-grid points of C")
    search.add_argument(
        "--refine-steps", type=int, default=3, help="refinement rounds around the best C"
    )
    search.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit")
    search.add_argument("--tol", type=float, default=1e-5, help="gradient tolerance per fit")
    search.add_argument("--float64", action="store_true", help="fit in float64")


def _output_flags(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--output", default="transfer_report.json", help="JSON report path")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output, if every dataset runs (an incomplete run writes "
        "<name>.incomplete.json beside it)",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="only print the table")
    out.add_argument("--debug", action="store_true", help="show the traceback of a usage error")


def build_parser(*, plot: bool = False) -> argparse.ArgumentParser:
    """The parser of the evaluation run, or with ``plot=True`` of the ``plot`` subcommand.

    Example:
        >>> args = build_parser().parse_args(["--checkpoint", "ckpt.pth", "--seeds", "0"])
        >>> args.checkpoint, args.seeds, args.dataset, args.overwrite
        ('ckpt.pth', [0], None, False)
    """
    if plot:
        p = OneLineParser(
            prog="python -m protohead.evaluation plot",
            description="Training-task top-1 against mean transfer log-odds, one point a model.",
            formatter_class=_HelpFormatter,
        )
        p.add_argument("reports", nargs="+", help="JSON reports written by the evaluation")
        p.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
        p.add_argument("--title", help="figure title")
        return p
    p = OneLineParser(
        prog="python -m protohead.evaluation",
        description="Linear-probe transfer evaluation of a frozen backbone (t-ReX protocol).",
        epilog="Plot several reports: python -m protohead.evaluation plot A.json B.json --out F",
        formatter_class=_HelpFormatter,
    )
    _model_flags(p)
    _data_flags(p)
    _feature_flags(p)
    _probe_flags(p)
    _output_flags(p)
    return p


def existing_paths(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """``(flag, path, "file" | "dir")`` of every path given on the command line that must exist.

    Defaults (``./data``, the cache directory) are not listed: a missing default dataset root
    makes the datasets *missing*, a path the user typed that does not exist is a usage error.

    Example:
        >>> args = build_parser().parse_args(["--arch", "resnet18", "--weights", "w.pth",
        ...     "--image-folder", "mine", "tr", "te"])
        >>> existing_paths(args)
        [('--weights', 'w.pth', 'file'), ('--image-folder mine', 'tr', 'dir'), \
('--image-folder mine', 'te', 'dir')]
    """
    found: list[tuple[str, str, str]] = []
    singles: list[tuple[str, Any, str]] = [
        ("--checkpoint", args.checkpoint, "file"),
        ("--weights", args.weights, "file"),
        ("--data-root", args.data_root, "dir"),
        ("--fashion-mnist-root", args.fashion_mnist_root, "dir"),
        ("--inat2018-root", args.inat2018_root, "dir"),
        ("--inat2019-root", args.inat2019_root, "dir"),
    ]
    found += [(flag, path, kind) for flag, path, kind in singles if path is not None]
    if args.sun397_lists:
        base = os.path.join(args.data_root if args.data_root is not None else "data", "SUN397")
        found += [("--sun397-lists", os.path.join(base, p), "file") for p in args.sun397_lists]
    for name, train, test in args.image_folder:
        found += [(f"--image-folder {name}", path, "dir") for path in (train, test)]
    for name, root, train, test in args.image_list:
        found.append((f"--image-list {name}", root, "dir"))
        found += [(f"--image-list {name}", path, "file") for path in (train, test)]
    return found
