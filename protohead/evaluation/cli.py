"""Command line of the transfer evaluation: ``python -m protohead.evaluation``.

Runs the linear-probe transfer protocol of Sariyildiz et al., "No Reason for No Supervision"
(ICLR 2023) on a frozen backbone: extract (and cache) features, tune the logistic-regression
penalty per dataset, average test top-1 over seeds, and report per-dataset log-odds and their
mean, as a table on stdout and a JSON file. ``python -m protohead.evaluation plot A.json B.json``
draws training-task top-1 against mean transfer log-odds for several models.

The input follows the model (:mod:`~protohead.evaluation.sources`): a ``--checkpoint`` is
evaluated at its training crop size and with its training statistics unless ``--crop``,
``--resize``, ``--mean``/``--std`` say otherwise, and the report records the values used and
where each came from.

Exit status: 0 when every requested dataset ran; 1 when some failed (an error such as a corrupt
image or a class too small to split: the error is recorded for that dataset, the others still run);
3 when some were missing (not downloaded) and none failed; 2 on usage errors (one line on stderr,
no traceback; ``--debug`` shows it), which are checked before the model is loaded: among them a
path given on the command line that does not exist, an existing ``--output`` without
``--overwrite``, an empty or truncated checkpoint. The report is written once, atomically, when
the run ends; a run that stops early writes nothing, and an existing report is only replaced by a
complete one (``--overwrite``): an incomplete run writes ``<name>.incomplete.json`` beside it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from protohead.data.errors import DatasetUnavailableError
from protohead.evaluation.cache import FeatureCache, model_checksum
from protohead.evaluation.cli_args import build_parser, existing_paths
from protohead.evaluation.datasets import (
    DATASET_GROUPS,
    DatasetOptions,
    TransferDataset,
    build_dataset,
    image_folder_pair,
    image_list_pair,
)
from protohead.evaluation.features import cached_features
from protohead.evaluation.report import (
    DatasetResult,
    TransferReport,
    format_table,
    read_json,
    write_json,
)
from protohead.evaluation.search import SearchConfig, linear_probe
from protohead.evaluation.sources import (
    ModelSource,
    arch_source,
    checkpoint_source,
    pretrained_source,
    resolve_transform,
)

__all__ = ["build_parser", "main"]

logger = logging.getLogger("protohead.evaluation")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MISSING = 3

# Errors that mean "the command line asked for something impossible": one line, exit 2.
_USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)


def _arch(args: argparse.Namespace) -> ModelSource:
    if args.weights is None:
        logger.warning("no --weights given: evaluating a randomly initialised %s", args.arch)
    return arch_source(args.arch, args.weights, small_input_stem=args.small_input_stem)


def _checkpoint(args: argparse.Namespace) -> ModelSource:
    if args.weights is not None or args.small_input_stem:
        raise ValueError("--weights and --small-input-stem go with --arch, not --checkpoint")
    return checkpoint_source(args.checkpoint)


# The mutually exclusive model-source flags (build_parser's "model" group) and how each
# resolves to a ModelSource before any weights load. A new source is a flag plus an entry here.
def _pretrained(args: argparse.Namespace) -> ModelSource:
    if args.weights is not None or args.small_input_stem:
        raise ValueError("--weights and --small-input-stem go with --arch, not --pretrained")
    return pretrained_source(args.pretrained, progress=not (args.no_progress or args.quiet))


MODEL_SOURCES: dict[str, Callable[[argparse.Namespace], ModelSource]] = {
    "arch": _arch,
    "checkpoint": _checkpoint,
    "pretrained": _pretrained,
}


def _model_source(args: argparse.Namespace) -> ModelSource:
    (dest,) = [dest for dest in MODEL_SOURCES if getattr(args, dest, None) is not None]
    return MODEL_SOURCES[dest](args)


def _plot_main(argv: Sequence[str]) -> int:
    from protohead.evaluation.plot import plot_transfer

    p = build_parser(plot=True)
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
    expanded = [n for name in names for n in DATASET_GROUPS.get(name, (name,))]
    jobs = [_Job(name, "registered") for name in dict.fromkeys(expanded)]
    jobs += [_Job(name, "folder", (train, test)) for name, train, test in args.image_folder]
    jobs += [_Job(spec[0], "list", tuple(spec[1:])) for spec in args.image_list]
    return jobs


def _build(job: _Job, transform: Any, options: DatasetOptions) -> TransferDataset:
    if job.kind == "folder":
        return image_folder_pair(job.name, *job.paths, transform=transform)
    if job.kind == "list":
        root, train, test = job.paths
        return image_list_pair(job.name, root, train, test, transform=transform)
    return build_dataset(job.name, transform, options)


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


def _check_args(args: argparse.Namespace) -> SearchConfig:
    """Usage errors that need no model or data, so that they surface before any work."""
    if args.train_top1 is not None and not 0.0 <= args.train_top1 <= 1.0:
        raise ValueError(f"--train-top1 must be a fraction in [0, 1], got {args.train_top1}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct, got {args.seeds}")
    for flag, path, kind in existing_paths(args):
        found = Path(path)
        if not found.exists():
            raise FileNotFoundError(f"{flag} {path!r} does not exist")
        if kind == "dir" and not found.is_dir():
            raise ValueError(f"{flag} {path!r} must be a directory, got a file")
        if kind == "file" and not found.is_file():
            raise ValueError(f"{flag} {path!r} must be a file, got a directory")
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"--output {args.output!r} is a directory; give the report's file path")
    if output.exists() and not args.overwrite:
        raise ValueError(
            f"--output {args.output!r} exists: pass --overwrite to replace it (only a run in "
            "which every dataset ran does) or choose another --output"
        )
    args.device = _device(args.device)
    return SearchConfig(
        c_min=args.c_min,
        c_max=args.c_max,
        grid_points=args.grid_points,
        refine_steps=args.refine_steps,
        val_fraction=args.val_fraction,
        max_iter=args.max_iter,
        tol=args.tol,
        dtype=torch.float64 if args.float64 else torch.float32,
        device=args.device,
    )


def _failure_reason(name: str, err: Exception) -> str:
    """``"<dataset>: <ErrorType>: <message>"``, the dataset named once."""
    message = str(err)
    if message.startswith(f"{name}: "):
        message = message[len(name) + 2 :]
    return f"{name}: {type(err).__name__}: {message}"


def _options(args: argparse.Namespace) -> DatasetOptions:
    return DatasetOptions(
        root=args.data_root if args.data_root is not None else "data",
        download=args.download,
        split_seed=args.split_seed,
        sun397_lists=tuple(args.sun397_lists) if args.sun397_lists else None,
        inat2018_root=args.inat2018_root,
        inat2019_root=args.inat2019_root,
        fashion_mnist_root=args.fashion_mnist_root,
        fashion_mnist_classes=args.fashion_mnist_classes,
        max_per_class=args.max_per_class,
        fake_trainval=args.fake_trainval,
        fake_test=args.fake_test,
        fake_classes=args.fake_classes,
        fake_image_size=args.fake_image_size,
    )


def _write_report(report: TransferReport, args: argparse.Namespace) -> Path:
    """Write the report; an existing file is replaced only by a complete run with --overwrite."""
    target = Path(args.output)
    complete = report.summary()["complete"]
    if target.exists() and not (complete and args.overwrite):
        tag = "incomplete" if not complete else "new"
        aside = target.with_name(f"{target.stem}.{tag}{target.suffix or '.json'}")
        why = "this run is incomplete" if not complete else "it appeared during the run"
        print(f"kept the existing {target} ({why}); this run's report goes beside it")
        target = aside
    return write_json(report, target)


def _evaluate(args: argparse.Namespace, search: SearchConfig) -> int:
    source = _model_source(args)
    transform_config, origin = resolve_transform(
        source,
        resize=args.resize,
        crop=args.crop,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
    )
    options = _options(args)
    logger.info(
        "input: Resize(%d) -> CenterCrop(%d) (crop: %s)",
        transform_config.resize,
        transform_config.crop,
        origin["crop"],
    )
    backbone = source.load()  # the first step that reads weights, after every usage check
    transform = transform_config.build()
    checksum = model_checksum(backbone)
    cache = None if args.no_cache else FeatureCache(args.cache_dir)
    extract = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "device": args.device,
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
        model=args.name or source.label,
        datasets=tuple(results),
        train_top1=args.train_top1 if args.train_top1 is not None else source.task_top1,
        settings={
            "model": source.description,
            "model_checksum": checksum,
            "device": args.device,
            "seeds": list(args.seeds),
            "transform": transform_config.as_dict(),
            "transform_origin": origin,
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
    print(f"report written to {_write_report(report, args)}")
    if report.failed:
        return EXIT_FAILED
    return EXIT_MISSING if report.missing else 0


def _usage_error(parser: argparse.ArgumentParser, err: BaseException) -> NoReturn:
    parser.error(str(err))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Example:
        >>> args = build_parser().parse_args(["--arch", "resnet18", "--dataset", "fake"])
        >>> args.seeds, args.dataset, args.crop  # crop None: the model's size, else 224
        ([0, 1, 2], ['fake'], None)
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["plot"]:
        return _plot_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if not args.quiet and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        search = _check_args(args)
        return _evaluate(args, search)
    except _USAGE_ERRORS as err:
        if args.debug:
            raise
        _usage_error(parser, err)
