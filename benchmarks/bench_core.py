"""Core-block benchmarks: incremental OCM memory and fused EMA, each against the naive way.

Both sides of every ratio run in the same process, interleaved, so machine noise hits them
alike. Prints a markdown table.

    python benchmarks/bench_core.py            # full sizes (ImageNet-scale memory)
    python benchmarks/bench_core.py --quick    # small smoke run
    python benchmarks/bench_core.py --device cuda --drift-updates 0   # on a GPU
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from _timing import median_seconds

from protohead import EMATeacher, PrototypeMemoryBank

DEVICE = torch.device("cpu")


def timeit(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in seconds on ``DEVICE`` (device work included)."""
    return median_seconds(fn, repeats, device=DEVICE)


class NaiveMemory:
    """The straightforward OCM: overwrite the ring, then re-reduce it every step."""

    def __init__(self, dim: int, size: int, num_classes: int) -> None:
        self.features = torch.randn(size, dim, device=DEVICE)
        self.labels = torch.randint(0, num_classes, (size,), device=DEVICE)
        self.num_classes, self.size, self.ptr = num_classes, size, 0

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        idx = (self.ptr + torch.arange(features.shape[0], device=DEVICE)) % self.size
        self.features[idx] = features
        self.labels[idx] = labels
        self.ptr = (self.ptr + features.shape[0]) % self.size

    @torch.no_grad()
    def prototypes(self) -> torch.Tensor:
        sums = torch.zeros(self.num_classes, self.features.shape[1], device=DEVICE)
        sums.index_add_(0, self.labels, self.features)
        return F.normalize(sums, dim=1)


def bench_memory(size: int, num_classes: int, dim: int, batch: int, repeats: int) -> list[str]:
    ours = PrototypeMemoryBank(dim, size, num_classes).to(DEVICE)
    naive = NaiveMemory(dim, size, num_classes)
    feats = torch.randn(batch, dim, device=DEVICE)
    labels = torch.randint(0, num_classes, (batch,), device=DEVICE)

    def step_ours() -> None:
        ours.prototypes()
        ours.update(feats, labels)

    def step_naive() -> None:
        naive.prototypes()
        naive.update(feats, labels)

    t_ours, t_naive = [], []
    for _ in range(3):  # interleave rounds against drifting machine load
        t_naive.append(timeit(step_naive, repeats))
        t_ours.append(timeit(step_ours, repeats))
    ours_s, naive_s = min(t_ours), min(t_naive)
    return [
        f"| memory update + prototypes (size {size}, {num_classes} classes, dim {dim}, "
        f"batch {batch}) | {naive_s * 1e3:.2f} ms | {ours_s * 1e3:.3f} ms | "
        f"**{naive_s / ours_s:.1f}×** | ≥ 20× |"
    ]


def bench_ema(repeats: int, arch: str) -> list[str]:
    student = torchvision.models.get_model(arch).to(DEVICE)
    ours = EMATeacher(student, momentum=0.999)
    naive_teacher = [p.detach().clone() for p in student.parameters()]
    momentum = 0.999

    @torch.no_grad()
    def naive() -> None:
        # The loop most code bases write: one Python iteration and three kernels per tensor.
        for t, s in zip(naive_teacher, student.parameters(), strict=True):
            t.mul_(momentum).add_((1 - momentum) * s.detach())

    t_ours, t_naive = [], []
    for _ in range(3):
        t_naive.append(timeit(naive, repeats))
        t_ours.append(timeit(lambda: ours.update(student), repeats))
    ours_s, naive_s = min(t_ours), min(t_naive)
    n_params = sum(p.numel() for p in student.parameters()) / 1e6
    return [
        f"| EMA update of {arch} ({n_params:.1f} M params) | {naive_s * 1e3:.2f} ms | "
        f"{ours_s * 1e3:.2f} ms | **{naive_s / ours_s:.1f}×** | ≥ 3× |"
    ]


def drift(num_updates: int) -> str:
    """Largest gap between the running float64 sums and an exact re-reduction."""
    gen = torch.Generator().manual_seed(0)
    bank = PrototypeMemoryBank(8, 64, 4, generator=gen)
    feats = torch.randn(4096, 4, 8, generator=gen) * 10
    labels = torch.randint(0, 4, (4096, 4), generator=gen)
    for i in range(num_updates):
        bank.update(feats[i % 4096], labels[i % 4096])
    running = bank._class_sums.clone()
    bank.resync()
    gap = (running - bank._class_sums).abs().max().item()
    return f"Running-sum drift after {num_updates:,} updates (batch 4, dim 8): {gap:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument(
        "--drift-updates", type=int, default=None, help="updates for the drift check"
    )
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = ["| benchmark | naive | protohead | speed-up | target |", "|---|---|---|---|---|"]
    if args.quick:
        rows += bench_memory(4096, 100, 64, 64, repeats=5)
        rows += bench_ema(repeats=3, arch="resnet18")
    else:
        rows += bench_memory(65536, 1000, 256, 256, repeats=20)
        rows += bench_ema(repeats=10, arch="resnet50")
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}\n")
    print("\n".join(rows))
    updates = args.drift_updates
    if updates is None:
        updates = 10_000 if args.quick else 1_000_000
    if updates:
        print("\n" + drift(updates))


if __name__ == "__main__":
    main()
