"""protohead against its peers on identical work: one markdown table, A/B interleaved rounds.

Every row times protohead and one peer doing the same work in the same process, interleaved
over rounds (benchmarks/_timing.py), and keeps each side's best round. Peers:

- lightly (``MemoryBankModule`` + a label ring for the memory rows; its DINO view transforms
  with t-ReX's settings for the multi-crop rows),
- timm (``ModelEmaV3`` with ``exclude_buffers=True``, against ``EMATeacher(copy_buffers=True)``:
  both lerp the parameters and copy the buffers),
- scikit-learn (``LogisticRegression``, lbfgs, same ``C`` and ``tol``),
- the authors' algorithm as the paper describes it (benchmarks/_baselines.py): class means
  re-reduced over the whole memory, a per-parameter EMA loop, PIL multi-crop with
  torchvision's v1 transforms per image.

Install the peers with ``pip install "protohead[bench]"``; rows of a missing peer are skipped
with a note. Memory, EMA and training-step rows use ``--threads`` torch threads (wall time);
multi-crop rows use 1 thread and process CPU time per image; logistic regression runs at 1
and 2 threads (wall time). ``peer / protohead`` > 1 means protohead is faster.

    python benchmarks/bench_peers.py                   # full table (minutes on 2 cores)
    python benchmarks/bench_peers.py --quick           # smoke run, 1 thread (< 60 s on 2 cores)
    python benchmarks/bench_peers.py --list            # row ids
    python benchmarks/bench_peers.py --only memory,ema/timm   # rows whose id has a pattern
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, NoReturn

import torch
from _peer_rows import Row, all_rows
from _timing import interleaved, machine_line

# Package providing each peer (import name, distribution name).
PEER_PACKAGES = {
    "lightly": ("lightly", "lightly"),
    "timm": ("timm", "timm"),
    "sklearn": ("sklearn", "scikit-learn"),
}


@contextmanager
def _threads(n: int, needs: str | None) -> Iterator[None]:
    """``n`` torch threads (and ``n`` BLAS threads for scikit-learn rows) inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    limits: Any = nullcontext()
    if needs == "sklearn":
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(n)
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(before)


def _fmt(seconds: float, unit: str) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s{unit}"
    if seconds >= 1e-2:
        return f"{seconds * 1e3:.0f} ms{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms{unit}"
    return f"{seconds * 1e3:.3f} ms{unit}"


def run_row(row: Row, rounds: int) -> str:
    with _threads(row.threads, row.needs):
        torch.manual_seed(0)
        case = row.build()
        best = interleaved({"peer": case.peer, "ours": case.ours}, rounds, case.measure)
    ours, peer = best["ours"] / case.items, best["peer"] / case.items
    ratio = f"{peer / ours:.2f}×"
    name = row.peer if case.note is None else f"{row.peer} ({case.note()})"
    return (
        f"| {row.work} | {_fmt(ours, case.unit)} | {name} | {_fmt(peer, case.unit)} | "
        f"{f'**{ratio}**' if peer >= ours else ratio} |"
    )


def _version(key: str) -> str | None:
    module, dist = PEER_PACKAGES[key]
    if importlib.util.find_spec(module) is None:
        return None
    return importlib.metadata.version(dist)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="bench_peers.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--only", default="", help="comma-separated patterns of row ids to run")
    parser.add_argument("--list", action="store_true", help="print the row ids and exit")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per row")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the memory, EMA and step rows (default: all; 1 with --quick)",
    )
    args = parser.parse_args(argv)
    if args.threads is None:
        # A smoke run must not depend on idle cores: oversubscribed threads on a busy 2-core
        # machine made tiny ops 100x slower.
        args.threads = 1 if args.quick else torch.get_num_threads()
    if args.threads < 1 or (args.rounds is not None and args.rounds < 1):
        parser.error(f"--threads and --rounds must be >= 1, got {args.threads}, {args.rounds}")
    rows = all_rows(args.quick, args.threads)
    patterns = [p for p in args.only.split(",") if p]
    if patterns:
        rows = [r for r in rows if any(p in r.id for p in patterns)]
        if not rows:
            parser.error(f"--only {args.only!r} matches no row id (see --list)")
    if args.list:
        print("\n".join(r.id for r in rows))
        return 0
    versions = {key: _version(key) for key in PEER_PACKAGES}
    rounds = args.rounds or (2 if args.quick else 5)
    found = ", ".join(f"{PEER_PACKAGES[k][1]} {v}" for k, v in versions.items() if v)
    print(f"Machine: {machine_line()}")
    print(
        f"Threads: {args.threads} torch threads for memory, EMA and training-step rows (wall "
        "time); 1 for multi-crop rows (process CPU time per image); logistic regression at 1 "
        "and 2 threads (wall time)"
    )
    print(f"Peers: {found or 'none installed'}; best of {rounds} interleaved rounds per side\n")
    print("| work | protohead | peer | peer's time | peer / protohead |")
    print("|---|---|---|---|---|")
    skipped: dict[str, int] = {}
    for row in rows:
        if row.needs is not None and versions[row.needs] is None:
            skipped[row.needs] = skipped.get(row.needs, 0) + 1
            continue
        print(run_row(row, rounds), flush=True)
    for key, count in skipped.items():
        print(
            f"\nnote: skipped {count} row(s): {PEER_PACKAGES[key][1]} is not installed "
            '(pip install "protohead[bench]")'
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
