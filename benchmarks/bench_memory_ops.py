"""OCM memory: aten ops and step time of ``update`` + ``prototypes``, against the naive way.

One "step" is what :class:`~protohead.TReX` does with its memory per training step: read the
prototypes, then enqueue a batch. Three variants:

* ``skip``: ``PrototypeMemoryBank(on_invalid="skip")``, the accelerator default (no host sync);
* ``raise``: ``on_invalid="raise"``, the CPU default (reads the validity check on the host);
* ``naive``: overwrite the ring, then re-reduce the whole ring into class means every step;
* ``skip, fused``: ``PrototypeMemoryBank(on_invalid="skip", fused=True)``, the step as two
  ``torch.compile``-d functions (skipped with a note where compiling fails);
* ``skip, graph`` (``--device cuda`` only): the ``skip`` step captured once in a CUDA graph
  and replayed, which a skip-mode step allows (no host sync, fixed ops); inputs are copied
  into the graph's static tensors first, as a training loop would.

Table 1 counts the aten ops that one step dispatches (a ``TorchDispatchMode`` on the CPU; the
count is deterministic) and how many of them are host syncs (``_local_scalar_dense``,
``item``, ``is_nonzero``, ``nonzero``...); for the fused step it counts the kernels Inductor
generates for its two graphs (each runs once per step; extern calls such as a matmul would
come on top, the memory step has none), with the host syncs of the same functions run
eagerly. Table 2 times the step: the three variants run in
interleaved rounds in one process, so machine load hits them alike, and the median of each
variant's per-step times is kept; ``naive / x`` > 1 means x is faster than the naive way.

    python benchmarks/bench_memory_ops.py                  # CPU, 1 thread
    python benchmarks/bench_memory_ops.py --quick          # smoke run
    python benchmarks/bench_memory_ops.py --device cuda    # GPU timings (sizes of --gpu-sizes)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from protohead import PrototypeMemoryBank
from protohead._fused_memory_step import FusedStep

# Ops that read a device value on the host (a stall on an accelerator).
HOST_SYNC_OPS = ("_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "allclose")

# (size, classes, dim, batch): the small memories, the paper's 8192-slot memory,
# an ImageNet-scale memory, and one with many classes.
CPU_SIZES = [
    (2048, 10, 128, 128),
    (4096, 100, 64, 64),
    (8192, 1000, 256, 256),
    (65536, 1000, 256, 256),
    (65536, 10000, 256, 256),
]
QUICK_SIZES = [(2048, 10, 128, 128), (65536, 1000, 256, 256)]
GPU_SIZES = [(m, 1000, 256, b) for m in (8192, 65536, 262144) for b in (64, 256)]


class OpCounter(TorchDispatchMode):
    """Records the name of every aten op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(
        self,
        func: Any,
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.ops.append(func.__name__)  # e.g. "index_add_.default"
        return func(*args, **(kwargs or {}))

    @property
    def host_syncs(self) -> list[str]:
        return [op for op in self.ops if op.split(".")[0] in HOST_SYNC_OPS]


class NaiveMemory:
    """The straightforward OCM: overwrite the ring, then re-reduce it every step."""

    def __init__(self, dim: int, size: int, num_classes: int, device: torch.device) -> None:
        self.features = torch.randn(size, dim, device=device)
        self.labels = torch.randint(0, num_classes, (size,), device=device)
        self.num_classes, self.size, self.ptr = num_classes, size, 0

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        idx = (self.ptr + torch.arange(features.shape[0], device=features.device)) % self.size
        self.features[idx] = features
        self.labels[idx] = labels
        self.ptr = (self.ptr + features.shape[0]) % self.size

    @torch.no_grad()
    def prototypes(self) -> torch.Tensor:
        sums = self.features.new_zeros(self.num_classes, self.features.shape[1])
        sums.index_add_(0, self.labels, self.features)
        return F.normalize(sums, dim=1)


def make_variants(
    size: int, classes: int, dim: int, device: torch.device
) -> dict[str, PrototypeMemoryBank | NaiveMemory]:
    gen = torch.Generator().manual_seed(0)
    return {
        "naive": NaiveMemory(dim, size, classes, device),
        "skip": PrototypeMemoryBank(dim, size, classes, on_invalid="skip", generator=gen).to(
            device
        ),
        "raise": PrototypeMemoryBank(dim, size, classes, on_invalid="raise", generator=gen).to(
            device
        ),
        "skip, fused": PrototypeMemoryBank(
            dim, size, classes, on_invalid="skip", generator=gen, fused=True
        ).to(device),
    }


def step_fn(
    memory: PrototypeMemoryBank | NaiveMemory, features: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        memory.prototypes()
        memory.update(features, labels)

    return step


def count_ops(size: int, classes: int, dim: int, batch: int) -> dict[str, tuple[int, int]]:
    """(total ops, host syncs) of one warmed-up step of every variant, on the CPU."""
    feats = torch.randn(batch, dim)
    labels = torch.randint(0, classes, (batch,))
    out = {}
    for name, memory in make_variants(size, classes, dim, torch.device("cpu")).items():
        step = step_fn(memory, feats, labels)
        step()  # warm-up: per-batch-size constants, lazy caches
        with OpCounter() as counter:
            step()
        out[name] = (len(counter.ops), len(counter.host_syncs))
    return out


def count_fused_kernels(size: int, classes: int, dim: int, batch: int) -> int | None:
    """Kernels Inductor generates for the fused skip-mode step; ``None`` if it cannot compile."""
    from torch._inductor import config, metrics

    torch._dynamo.reset()
    FusedStep._compiled.clear()
    with config.patch(fx_graph_cache=False):  # a cache hit would generate nothing to count
        metrics.reset()
        bank = PrototypeMemoryBank(dim, size, classes, on_invalid="skip", fused=True)
        step_fn(bank, torch.randn(batch, dim), torch.randint(0, classes, (batch,)))()
        kernels = metrics.generated_kernel_count
    assert bank._fused_step is not None
    return None if bank._fused_step.failed else kernels


def graph_step(
    memory: PrototypeMemoryBank, features: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    """The skip-mode step captured in a CUDA graph: copy the inputs in, replay."""
    static_features, static_labels = features.clone(), labels.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up builds the per-batch-size constants
        for _ in range(3):
            memory.prototypes()
            memory.update(static_features, static_labels)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        memory.prototypes()
        memory.update(static_features, static_labels)

    def step() -> None:
        static_features.copy_(features)
        static_labels.copy_(labels)
        graph.replay()

    return step


def time_steps(
    size: int, classes: int, dim: int, batch: int, device: torch.device, rounds: int, steps: int
) -> dict[str, float]:
    """Median seconds per step of every variant, variants interleaved round by round."""
    feats = torch.randn(batch, dim, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    steps_of = {
        name: step_fn(memory, feats, labels)
        for name, memory in make_variants(size, classes, dim, device).items()
    }
    if device.type == "cuda":
        gen = torch.Generator().manual_seed(0)
        bank = PrototypeMemoryBank(dim, size, classes, on_invalid="skip", generator=gen)
        try:
            steps_of["skip, graph"] = graph_step(bank.to(device), feats, labels)
        except RuntimeError as error:  # report, keep the other columns
            print(f"CUDA graph capture failed at size {size}: {error}")
    times: dict[str, list[float]] = {name: [] for name in steps_of}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps_of.values():  # warm-up
        for _ in range(3):
            step()
    for _ in range(rounds):
        for name, step in steps_of.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def size_label(size: int, classes: int, dim: int, batch: int) -> str:
    return f"| {size} | {classes} | {dim} | {batch} "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, few rounds")
    parser.add_argument("--device", default="cpu", help="torch device for the timings")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--no-timing", action="store_true", help="only count ops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sizes = GPU_SIZES if device.type == "cuda" else QUICK_SIZES if args.quick else CPU_SIZES
    rounds = args.rounds or (5 if args.quick else 15)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), timings on {where}\n")
    print("Aten ops dispatched by one update + prototypes (host syncs in brackets), CPU:\n")
    print("| size | classes | dim | batch | skip | raise | naive | skip, fused: kernels |")
    print("|---|---|---|---|---|---|---|---|")
    for dims in sizes:
        counts = count_ops(*dims)
        cells = " | ".join(f"{counts[v][0]} ({counts[v][1]})" for v in ("skip", "raise", "naive"))
        kernels = count_fused_kernels(*dims)
        fused = "compile failed" if kernels is None else f"{kernels} ({counts['skip, fused'][1]})"
        print(size_label(*dims) + f"| {cells} | {fused} |")
    if args.no_timing:
        return

    print(f"\nStep time (median of {rounds} interleaved rounds), {where}:\n")
    variants = ["naive", "skip", "raise", "skip, fused"]
    variants += ["skip, graph"] if device.type == "cuda" else []
    print("| size | classes | dim | batch | " + " | ".join(variants) + " | ", end="")
    print(" | ".join(f"naive / {v}" for v in variants[1:]) + " | skip / raise |")
    print("|---" * (4 + 2 * len(variants)) + "|")
    for dims in sizes:
        steps = 20 if device.type == "cuda" else max(8, min(50, 2_000_000 // (dims[0] * dims[2])))
        t = time_steps(*dims, device=device, rounds=rounds, steps=steps)
        times = " | ".join(f"{t[v] * 1e6:.0f} µs" if v in t else "n/a" for v in variants)
        ratios = " | ".join(f"{t['naive'] / t[v]:.2f}×" if v in t else "n/a" for v in variants[1:])
        print(size_label(*dims) + f"| {times} | {ratios} | {t['skip'] / t['raise']:.2f} |")


if __name__ == "__main__":
    main()
