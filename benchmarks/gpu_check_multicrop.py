"""GPU check of the batched multi-crop augmenter: throughput and cost inside a training step.

Measures, on one accelerator, in one run (about two minutes on an H100, compilation included),
for the eager augmenter and for ``fuse=True`` (colour chain compiled with ``torch.compile``):

1. Host syncs in ``BatchedMultiCrop.forward`` (``torch.cuda.set_sync_debug_mode``): expected 0.
2. Images/s of the augmenter alone, 1 x 224 + 8 x 96 crops from 256 px uint8 images on the
   device, bf16 + channels_last output (target >= 10,000 images/s on an H100), and the
   kernels that take most of its time (``torch.profiler``).
3. A ResNet-50 t-ReX training step (``TReX`` with the ``trex`` preset: projector, OCM memory,
   EMA teacher; bf16 autocast, channels_last, SGD) fed with pre-made device tensors, then
   fed through the augmenter from uint8 batches copied from pinned host memory, inline and
   prefetched on a side stream; the ratios to the pre-made run (target >= 90%).

Timing uses CUDA events after warm-up iterations. Prints a markdown table; a failing section
prints its error in the table and the rest still runs.

    python benchmarks/gpu_check_multicrop.py                      # CUDA, full sizes
    python benchmarks/gpu_check_multicrop.py --device cpu --quick # smoke test anywhere
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor

from protohead import TReX, get_preset
from protohead.augment.batched import BatchedMultiCrop


@dataclass
class Setup:
    device: torch.device
    src: int  # source image side
    global_size: int
    local_size: int
    locals: int
    aug_batch: int
    train_batch: int
    warmup: int
    iters: int
    classes: int = 1000


def timer(setup: Setup, fn: Callable[[], object], iters: int) -> float:
    """Seconds per call of ``fn`` after ``setup.warmup`` calls (CUDA events on CUDA)."""
    for _ in range(setup.warmup):
        fn()
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    begin = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - begin) / iters


def make_augmenter(setup: Setup, fuse: bool) -> BatchedMultiCrop:
    aug = BatchedMultiCrop(
        global_crop_size=setup.global_size,
        local_crop_size=setup.local_size,
        num_local_crops=setup.locals,
        output_dtype=torch.bfloat16,
        channels_last=True,
        fuse=fuse,
    )
    return aug.to(setup.device)


def mode(fuse: bool) -> str:
    return "fused" if fuse else "eager"


def uint8_images(setup: Setup, batch: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, setup.src, setup.src), dtype=torch.uint8, generator=g)


def check_syncs(setup: Setup, fuse: bool) -> str:
    if setup.device.type != "cuda":
        return "n/a (not CUDA)"
    aug = make_augmenter(setup, fuse)
    n = setup.train_batch  # a size the other rows use too: compiled once
    images = uint8_images(setup, n).to(setup.device)
    sizes = torch.full((n, 2), setup.src, device=setup.device)
    gen = torch.Generator(device=setup.device).manual_seed(0)
    aug(images, generator=gen)  # first calls may compile or create cached constants
    aug(images, sizes, generator=gen)
    torch.cuda.synchronize(setup.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            aug(images, generator=gen)
            aug(images, sizes, generator=gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # The mode's own "prototype feature" notice is not a sync.
    syncs = [
        str(w.message).splitlines()[0]
        for w in caught
        if "synchron" in str(w.message).lower() and "prototype feature" not in str(w.message)
    ]
    return f"{len(syncs)}" + (f" ({syncs[0]})" if syncs else "")


def augmenter_rate(setup: Setup, batch: int, fuse: bool) -> str:
    aug = make_augmenter(setup, fuse)
    images = uint8_images(setup, batch).to(setup.device)
    gen = torch.Generator(device=setup.device).manual_seed(0)
    begin = time.perf_counter()
    aug(images, generator=gen)  # compiles when fused
    first = time.perf_counter() - begin
    seconds = timer(setup, lambda: aug(images, generator=gen), setup.iters)
    return (
        f"{batch / seconds:,.0f} images/s ({seconds * 1e3:.2f} ms / batch of {batch}; "
        f"first call {first:.1f} s)"
    )


def kernel_profile(setup: Setup, batch: int, fuse: bool, top: int = 8) -> None:
    """Prints the kernels that take most device time in a few augmenter calls."""
    aug = make_augmenter(setup, fuse)
    images = uint8_images(setup, batch).to(setup.device)
    gen = torch.Generator(device=setup.device).manual_seed(0)
    for _ in range(3):
        aug(images, generator=gen)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if setup.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(setup.device)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            aug(images, generator=gen)
        if setup.device.type == "cuda":
            torch.cuda.synchronize(setup.device)
    key = "cuda_time_total" if setup.device.type == "cuda" else "cpu_time_total"
    print(f"\n{mode(fuse)} augmenter, batch {batch}, 3 calls: top kernels")
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60))


class Trainer:
    """ResNet-50 ``TReX`` (``trex`` preset), bf16 autocast, channels_last, SGD."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        torch.manual_seed(0)
        arch = "resnet18" if setup.src < 64 else "resnet50"
        kwargs = get_preset("trex").model_kwargs()
        if setup.src < 64:
            kwargs["memory_size"] = 64
        model = TReX(arch, setup.classes, **kwargs, on_invalid="skip")
        self.model = model.to(setup.device, memory_format=torch.channels_last).train()
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4
        )
        self.labels = torch.randint(0, setup.classes, (setup.train_batch,), device=setup.device)

    def step(self, crops: list[Tensor]) -> None:
        with torch.autocast(self.setup.device.type, dtype=torch.bfloat16):
            logits = self.model(crops, self.labels)
        loss = self.model.loss(logits.float(), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def training_rows(setup: Setup, fuse: bool) -> list[tuple[str, str, str]]:
    if setup.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer = Trainer(setup)
    aug = make_augmenter(setup, fuse)
    gen = torch.Generator(device=setup.device).manual_seed(0)
    host = uint8_images(setup, setup.train_batch)
    if setup.device.type == "cuda":
        host = host.pin_memory()
    premade = aug(host.to(setup.device), generator=gen)
    n = setup.train_batch

    def premade_step() -> None:
        trainer.step(premade)

    def inline_step() -> None:
        images = host.to(setup.device, non_blocking=True)
        trainer.step(aug(images, generator=gen))

    t_pre = timer(setup, premade_step, setup.iters)
    t_inline = timer(setup, inline_step, setup.iters)
    m = mode(fuse)
    rows = [
        (
            f"t-ReX train step, pre-made device tensors ({m} run)",
            f"{n / t_pre:,.0f} images/s ({t_pre * 1e3:.1f} ms / step of {n})",
            "",
        ),
        (
            f"t-ReX train step, {m} augmenter inline (same stream)",
            f"{n / t_inline:,.0f} images/s, **{t_pre / t_inline:.1%}** of pre-made",
            "≥ 90%",
        ),
    ]
    if setup.device.type == "cuda":
        side = torch.cuda.Stream(setup.device)
        main = torch.cuda.current_stream(setup.device)
        pending: list[tuple[list[Tensor], torch.cuda.Event]] = []

        def produce() -> None:
            with torch.cuda.stream(side):
                crops = aug(host.to(setup.device, non_blocking=True), generator=gen)
                done = torch.cuda.Event()
                done.record(side)
            pending.append((crops, done))

        def prefetch_step() -> None:
            if not pending:
                produce()
            crops, done = pending.pop(0)
            main.wait_event(done)
            for c in crops:
                c.record_stream(main)
            produce()  # the next batch's augmentation overlaps this step
            trainer.step(crops)

        t_side = timer(setup, prefetch_step, setup.iters)
        rows.append(
            (
                f"t-ReX train step, {m} augmenter prefetched on a side stream",
                f"{n / t_side:,.0f} images/s, **{t_pre / t_side:.1%}** of pre-made",
                "≥ 90%",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    parser.add_argument("--aug-batch", type=int, default=256, help="augmenter-alone batch")
    parser.add_argument("--train-batch", type=int, default=128, help="training batch")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per row")
    parser.add_argument(
        "--fuse", choices=("both", "on", "off"), default="both", help="BatchedMultiCrop(fuse=...)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        setup = Setup(device, 48, 32, 16, 2, 4, 2, warmup=1, iters=2, classes=10)
    else:
        setup = Setup(device, 256, 224, 96, 8, args.aug_batch, args.train_batch, 5, args.iters)
    begin = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"device: {name}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(
        f"crops: 1 x {setup.global_size} + {setup.locals} x {setup.local_size} from "
        f"{setup.src} px uint8, bf16 channels_last output\n"
    )
    rows: list[tuple[str, str, str]] = []
    sections: list[tuple[str, Callable[[], list[tuple[str, str, str]]]]] = []
    for fuse in (False, True) if args.fuse == "both" else (args.fuse == "on",):
        m = mode(fuse)
        sections += [
            (
                f"host syncs in forward ({m})",
                lambda f=fuse, m=m: [(f"host syncs in forward ({m})", check_syncs(setup, f), "0")],
            ),
            (
                f"{m} augmenter alone",
                lambda f=fuse, m=m: [
                    (f"{m} augmenter alone, batch {b}", augmenter_rate(setup, b, f), "≥ 10,000/s")
                    for b in dict.fromkeys([setup.train_batch, setup.aug_batch])
                ],
            ),
            (f"{m} kernel profile", lambda f=fuse: kernel_profile(setup, setup.aug_batch, f) or []),
            (f"{m} training step", lambda f=fuse: training_rows(setup, f)),
        ]
    for title, run in sections:
        try:
            rows += run()
        except Exception as error:  # report and go on: the other checks still run
            traceback.print_exc()
            rows.append((title, f"FAILED: {type(error).__name__}: {error}", ""))
    print("| measurement | result | target |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ntotal wall time {time.perf_counter() - begin:.1f} s")


if __name__ == "__main__":
    main()
