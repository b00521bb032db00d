"""Command line of the transfer evaluation: ``python -m protohead.evaluation``.

Runs the linear-probe transfer protocol of Sariyildiz et al., "No Reason for No Supervision"
(ICLR 2023) on a frozen backbone: extract (and cache) features, tune the logistic-regression
penalty per dataset, average test top-1 over seeds, and report per-dataset log-odds and their
mean, as a table on stdout and a JSON file. ``python -m protohead.evaluation plot A.json B.json``
draws training-task top-1 against mean transfer log-odds for several models.

Exit status: 0 when every requested dataset ran; 1 when some failed (an error such as a corrupt
image or a class too small to split: the error is recorded for that dataset, the others still run,
and the table and JSON are still written); 3 when some were missing (not downloaded) and none
failed; 2 on usage errors, which are checked before the model is loaded. Failed and missing
datasets are in the table and the JSON, and excluded from the mean with the denominator stated.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protohead.backbone import BackboneAdapter
from protohead.data.class_subset import parse_classes
from protohead.data.errors import DatasetUnavailableError
from protohead.evaluation.cache import FeatureCache, model_checksum
from protohead.evaluation.datasets import (
    DATASETS,
    PAPER_DATASETS,
    DatasetOptions,
    TransferDataset,
    build_dataset,
    image_folder_pair,
    image_list_pair,
)
from protohead.evaluation.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformConfig,
    cached_features,
)
from protohead.evaluation.loading import (
    checkpoint_task_top1,
    load_backbone,
    load_checkpoint_backbone,
)
from protohead.evaluation.report import (
    DatasetResult,
    TransferReport,
    format_table,
    read_json,
    write_json,
)
from protohead.evaluation.search import SearchConfig, linear_probe
from protohead.pretrained import list_pretrained, load_pretrained, pretrained_info

__all__ = ["build_parser", "main", "parse_classes"]

logger = logging.getLogger("protohead.evaluation")

EXIT_FAILED = 1
EXIT_MISSING = 3

Transform = Callable[[Any], Any]


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "protohead", "features")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the evaluation run (see ``--help``).

    Example:
        >>> args = build_parser().parse_args(["--checkpoint", "ckpt.pth", "--seeds", "0"])
        >>> args.checkpoint, args.seeds, args.dataset
        ('ckpt.pth', [0], None)
    """
    p = argparse.ArgumentParser(
        prog="python -m protohead.evaluation",
        description="Linear-probe transfer evaluation of a frozen backbone (t-ReX protocol).",
        epilog="Plot several reports: python -m protohead.evaluation plot A.json B.json --out F",
    )
    model = p.add_argument_group("model (one of --arch, --checkpoint or --pretrained)")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help="torchvision name or timm:<name>, e.g. resnet50")
    source.add_argument("--checkpoint", help="protohead training checkpoint (model + args)")
    source.add_argument(
        "--pretrained",
        choices=list_pretrained(),
        metavar="NAME",
        help="released t-ReX weights by name, downloaded (CC BY-NC-SA 4.0); one of "
        f"{', '.join(list_pretrained())}",
    )
    model.add_argument("--weights", help="backbone.pth state_dict for --arch")
    model.add_argument("--small-input-stem", action="store_true", help="small-image stem")
    model.add_argument("--name", help="model label in the report (default: arch/file name)")
    model.add_argument(
        "--train-top1",
        type=float,
        help="training-task top-1 in [0, 1], for the report and plot (default: read from "
        "a --checkpoint, see checkpoint_task_top1; the authors' reported one for --pretrained)",
    )

    data = p.add_argument_group("datasets")
    choices = [*sorted(DATASETS), "paper"]
    data.add_argument(
        "--dataset",
        action="append",
        choices=choices,
        help="registered dataset, repeatable; 'paper' = the 8 transfer datasets (default)",
    )
    data.add_argument(
        "--image-folder",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "TRAIN_DIR", "TEST_DIR"),
        help="ImageFolder pair, repeatable",
    )
    data.add_argument(
        "--image-list",
        nargs=4,
        action="append",
        default=[],
        metavar=("NAME", "ROOT", "TRAIN_LIST", "TEST_LIST"),
        help="image-list pair (e.g. an ImageNet-CoG level), repeatable",
    )
    data.add_argument("--data-root", default="data", help="root of the torchvision datasets")
    data.add_argument("--download", action="store_true", help="let torchvision download")
    data.add_argument("--split-seed", type=int, default=0, help="EuroSAT test-split seed")
    data.add_argument(
        "--sun397-lists", nargs=2, metavar=("TRAIN", "TEST"), help="relative to DATA_ROOT/SUN397"
    )
    data.add_argument("--fashion-mnist-root", help="IDX directory (default: Debian package)")
    data.add_argument("--fashion-mnist-classes", type=parse_classes, help="e.g. 5-9")
    data.add_argument("--max-per-class", type=int, help="first N images per class (fmnist)")
    data.add_argument("--fake-trainval", type=int, default=200)
    data.add_argument("--fake-test", type=int, default=100)
    data.add_argument("--fake-classes", type=int, default=10)
    data.add_argument("--fake-image-size", type=int, default=32)

    feats = p.add_argument_group("features")
    feats.add_argument("--resize", type=int, default=224)
    feats.add_argument("--crop", type=int, default=224)
    feats.add_argument("--interpolation", default="bicubic")
    feats.add_argument("--mean", type=float, nargs=3, default=list(IMAGENET_MEAN), metavar="M")
    feats.add_argument("--std", type=float, nargs=3, default=list(IMAGENET_STD), metavar="S")
    feats.add_argument("--batch-size", type=int, default=128)
    feats.add_argument("--workers", type=int, default=0)
    feats.add_argument("--device", default="auto", help="features and fits; 'auto' = CUDA if any")
    feats.add_argument("--cache-dir", default=_default_cache_dir())
    feats.add_argument("--no-cache", action="store_true")
    feats.add_argument("--no-progress", action="store_true")

    search = p.add_argument_group("linear probe")
    search.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    search.add_argument("--val-fraction", type=float, default=0.2)
    search.add_argument("--c-min", type=float, default=1e-6)
    search.add_argument("--c-max", type=float, default=1e5)
    search.add_argument("--grid-points", type=int, default=12)
    search.add_argument("--refine-steps", type=int, default=3)
    search.add_argument("--max-iter", type=int, default=1000)
    search.add_argument("--tol", type=float, default=1e-5)
    search.add_argument("--float64", action="store_true", help="fit in float64")

    out = p.add_argument_group("output")
    out.add_argument("--output", default="transfer_report.json", help="JSON report path")
    out.add_argument("-q", "--quiet", action="store_true", help="only print the table")
    return p


def _plot_main(argv: Sequence[str]) -> int:
    from protohead.evaluation.plot import plot_transfer

    p = argparse.ArgumentParser(prog="python -m protohead.evaluation plot")
    p.add_argument("reports", nargs="+", help="JSON reports written by the evaluation")
    p.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--title")
    args = p.parse_args(list(argv))
    try:
        path = plot_transfer([read_json(r) for r in args.reports], args.out, title=args.title)
    except (ValueError, OSError, ImportError) as err:
        p.error(str(err))
    print(f"wrote {path}")
    return 0


@dataclass(frozen=True)
class _Job:
    name: str
    kind: str  # "registered", "folder" or "list"
    paths: tuple[str, ...] = ()


def _jobs(args: argparse.Namespace) -> list[_Job]:
    names = list(args.dataset or [])
    if not names and not args.image_folder and not args.image_list:
        names = ["paper"]
    expanded = [n for name in names for n in (PAPER_DATASETS if name == "paper" else (name,))]
    jobs = [_Job(name, "registered") for name in dict.fromkeys(expanded)]
    jobs += [_Job(name, "folder", (train, test)) for name, train, test in args.image_folder]
    jobs += [_Job(spec[0], "list", tuple(spec[1:])) for spec in args.image_list]
    return jobs


def _build(job: _Job, transform: Transform, options: DatasetOptions) -> TransferDataset:
    if job.kind == "folder":
        return image_folder_pair(job.name, *job.paths, transform=transform)
    if job.kind == "list":
        root, train, test = job.paths
        return image_list_pair(job.name, root, train, test, transform=transform)
    return build_dataset(job.name, transform, options)


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, str, float | None]:
    """The backbone, its report label and the training top-1 stored in a checkpoint."""
    if args.checkpoint is not None:
        if args.weights is not None or args.small_input_stem:
            raise ValueError("--weights and --small-input-stem go with --arch, not --checkpoint")
        backbone, _ = load_checkpoint_backbone(args.checkpoint)
        return backbone, Path(args.checkpoint).stem, checkpoint_task_top1(args.checkpoint)
    if args.pretrained is not None:
        if args.weights is not None or args.small_input_stem:
            raise ValueError("--weights and --small-input-stem go with --arch, not --pretrained")
        resnet = load_pretrained(args.pretrained, progress=not (args.no_progress or args.quiet))
        reported_top1 = pretrained_info(args.pretrained).imagenet_top1 / 100
        return BackboneAdapter(resnet), args.pretrained, reported_top1
    if args.weights is None:
        logger.warning("no --weights given: evaluating a randomly initialised %s", args.arch)
    backbone = load_backbone(args.arch, args.weights, small_input_stem=args.small_input_stem)
    label = args.arch if args.weights is None else f"{args.arch} ({Path(args.weights).stem})"
    return backbone, label, None


def _device(name: str) -> str:
    """``--device`` resolved, and checked to exist on this machine."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    allowed = f"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(allowed) from err
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    present = {"cpu": True, "cuda": (device.index or 0) < count, "mps": mps}
    if device.type not in present:
        raise ValueError(allowed)
    if not present[device.type]:
        have = f"{count} CUDA device(s){'' if mps else ', no MPS'}"
        raise ValueError(f"--device must be a device of this machine ({have}), got {name!r}")
    return name


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors that need no model or data, so that they surface before any work."""
    if args.train_top1 is not None and not 0.0 <= args.train_top1 <= 1.0:
        raise ValueError(f"--train-top1 must be a fraction in [0, 1], got {args.train_top1}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct, got {args.seeds}")
    args.device = _device(args.device)


def _failure_reason(name: str, err: Exception) -> str:
    """``"<dataset>: <ErrorType>: <message>"``, the dataset named once."""
    message = str(err)
    if message.startswith(f"{name}: "):
        message = message[len(name) + 2 :]
    return f"{name}: {type(err).__name__}: {message}"


def _evaluate(args: argparse.Namespace) -> int:
    device = args.device
    search = SearchConfig(
        c_min=args.c_min,
        c_max=args.c_max,
        grid_points=args.grid_points,
        refine_steps=args.refine_steps,
        val_fraction=args.val_fraction,
        max_iter=args.max_iter,
        tol=args.tol,
        dtype=torch.float64 if args.float64 else torch.float32,
        device=device,
    )
    transform_config = TransformConfig(
        args.resize, args.crop, args.interpolation, tuple(args.mean), tuple(args.std)
    )
    transform = transform_config.build()
    options = DatasetOptions(
        root=args.data_root,
        download=args.download,
        split_seed=args.split_seed,
        sun397_lists=tuple(args.sun397_lists) if args.sun397_lists else None,
        fashion_mnist_root=args.fashion_mnist_root,
        fashion_mnist_classes=args.fashion_mnist_classes,
        max_per_class=args.max_per_class,
        fake_trainval=args.fake_trainval,
        fake_test=args.fake_test,
        fake_classes=args.fake_classes,
        fake_image_size=args.fake_image_size,
    )
    backbone, label, stored_top1 = _load_model(args)
    checksum = model_checksum(backbone)
    cache = None if args.no_cache else FeatureCache(args.cache_dir)
    extract = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "device": device,
        "progress": not args.no_progress and not args.quiet,
    }
    val_per_class: dict[str, int] = {}  # datasets whose search used a fixed per-class split

    def run(job: _Job) -> DatasetResult:
        data = _build(job, transform, options)
        splits = {}
        for split, dataset in (("trainval", data.trainval), ("test", data.test)):
            splits[split] = cached_features(
                backbone,
                dataset,
                cache=cache,
                dataset_config=data.config,
                split=split,
                transform_config=transform_config.as_dict(),
                checksum=checksum,
                desc=f"{data.name}/{split}",
                **extract,
            )
        (x_tv, y_tv, _), (x_te, y_te, _) = splits["trainval"], splits["test"]
        probe = linear_probe(
            x_tv,
            y_tv,
            x_te,
            y_te,
            seeds=args.seeds,
            config=search,
            num_classes=data.num_classes,
            val_per_class=data.val_per_class,
            name=data.name,
        )
        logger.info("%s: top-1 %.2f%%", data.name, 100 * probe.accuracy)
        if data.val_per_class is not None:
            val_per_class[data.name] = data.val_per_class
        return DatasetResult.from_probe(
            data.name,
            probe,
            num_trainval=len(y_tv),
            num_test=len(y_te),
            num_classes=data.num_classes,
        )

    results: list[DatasetResult] = []
    for job in _jobs(args):
        try:
            results.append(run(job))
        except DatasetUnavailableError as err:
            logger.warning("%s is missing: %s", job.name, err)
            results.append(DatasetResult.missing(job.name, str(err)))
        except (ValueError, OSError, RuntimeError) as err:
            # One bad dataset (a corrupt image, a class too small to split) must not discard
            # the others' results: record it, go on, and fail the exit status at the end.
            reason = _failure_reason(job.name, err)
            logger.error("%s failed, continuing with the other datasets: %s", job.name, reason)
            logger.debug("traceback of the %s failure", job.name, exc_info=True)
            results.append(DatasetResult.failure(job.name, reason))

    report = TransferReport(
        model=args.name or label,
        datasets=tuple(results),
        train_top1=args.train_top1 if args.train_top1 is not None else stored_top1,
        settings={
            "model_checksum": checksum,
            "device": device,
            "seeds": list(args.seeds),
            "transform": transform_config.as_dict(),
            "search": {
                "c_min": search.c_min,
                "c_max": search.c_max,
                "grid_points": search.grid_points,
                "refine_steps": search.refine_steps,
                "val_fraction": search.val_fraction,
                "val_per_class": val_per_class,
                "max_iter": search.max_iter,
                "tol": search.tol,
                "dtype": str(search.dtype),
            },
        },
    )
    print(format_table(report))
    path = write_json(report, args.output)
    print(f"report written to {path}")
    if report.failed:
        return EXIT_FAILED
    return EXIT_MISSING if report.missing else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Example:
        >>> args = build_parser().parse_args(["--arch", "resnet18", "--dataset", "fake"])
        >>> args.seeds, args.dataset, args.resize
        ([0, 1, 2], ['fake'], 224)
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["plot"]:
        return _plot_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if not args.quiet and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _check_args(args)
        return _evaluate(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))
    return 2  # unreachable: parser.error exits
