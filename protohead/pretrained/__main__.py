"""``python -m protohead.pretrained``: list the released weights, print a file's SHA-256.

``--print-sha256 NAME`` downloads the registry file of ``NAME`` (or takes it from the cache)
and prints the hash a maintainer records in :data:`~protohead.pretrained.PRETRAINED`;
``--print-sha256 PATH`` hashes a local file. Usage errors print one line and exit 2; a failed
download exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from protohead.pretrained.files import WeightsUnavailableError, file_sha256, pretrained_file
from protohead.pretrained.registry import PRETRAINED, WEIGHTS_LICENSE, list_pretrained


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m protohead.pretrained",
        description=f"Released t-ReX weights (licence of the weights: {WEIGHTS_LICENSE}).",
    )
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="print the registry")
    action.add_argument("--print-sha256", metavar="NAME|PATH", help="hash of a file")
    p.add_argument("--full-checkpoint", action="store_true", help="with NAME: the full one")
    p.add_argument("--no-progress", action="store_true", help="no download progress bar")
    return p


def _table() -> str:
    header = ("name", "IN1K top-1", "transfer log-odds", "sha256", "full checkpoint", "url")
    rows = [header] + [
        (
            e.name,
            f"{e.imagenet_top1:.1f}",
            f"{e.transfer_log_odds:.4f}",
            "recorded" if e.sha256 else "-",
            "yes" if e.full_checkpoint_url else "-",
            e.url,
        )
        for e in PRETRAINED.values()
    ]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.list:
        print(_table())
        return 0
    target = args.print_sha256
    try:
        if target in PRETRAINED:
            path = pretrained_file(
                target,
                full_checkpoint=args.full_checkpoint,
                progress=not args.no_progress,
                verify=False,
            )
        elif os.path.isfile(target):
            if args.full_checkpoint:
                parser.error("--full-checkpoint goes with a registry NAME, not a PATH")
            path = target
        else:
            parser.error(
                f"--print-sha256 must be one of {list_pretrained()} or an existing file, "
                f"got {target!r}"
            )
    except ValueError as err:
        parser.error(str(err))
    except WeightsUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{file_sha256(path)}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
