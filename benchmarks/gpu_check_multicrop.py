"""GPU check of the batched multi-crop augmenter: throughput and cost inside a training step.

Measures, on one accelerator, in one run (about a minute on an H100):

1. Host syncs in ``GPUMultiCrop.forward`` (``torch.cuda.set_sync_debug_mode``): expected 0.
2. Images/s of the augmenter alone, 1 x 224 + 8 x 96 crops from 256 px uint8 images on the
   device, bf16 + channels_last output (target >= 10,000 images/s on an H100).
3. A ResNet-50 t-ReX-style training step (torchvision backbone + linear head over all crops,
   cross-entropy, bf16 autocast, channels_last, SGD) fed with pre-made device tensors, then
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
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from protohead.gpu_multicrop import GPUMultiCrop


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


def make_augmenter(setup: Setup) -> GPUMultiCrop:
    aug = GPUMultiCrop(
        global_crop_size=setup.global_size,
        local_crop_size=setup.local_size,
        num_local_crops=setup.locals,
        output_dtype=torch.bfloat16,
        channels_last=True,
    )
    return aug.to(setup.device)


def uint8_images(setup: Setup, batch: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, setup.src, setup.src), dtype=torch.uint8, generator=g)


def check_syncs(setup: Setup) -> str:
    if setup.device.type != "cuda":
        return "n/a (not CUDA)"
    aug = make_augmenter(setup)
    images = uint8_images(setup, 8).to(setup.device)
    sizes = torch.full((8, 2), setup.src, device=setup.device)
    gen = torch.Generator(device=setup.device).manual_seed(0)
    aug(images, sizes, generator=gen)  # first call may create cached constants
    torch.cuda.synchronize(setup.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            aug(images, generator=gen)
            aug(images, sizes, generator=gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchron" in str(w.message)]
    return f"{len(syncs)}" + (f" ({syncs[0]})" if syncs else "")


def augmenter_rate(setup: Setup, batch: int) -> str:
    aug = make_augmenter(setup)
    images = uint8_images(setup, batch).to(setup.device)
    gen = torch.Generator(device=setup.device).manual_seed(0)
    seconds = timer(setup, lambda: aug(images, generator=gen), setup.iters)
    return f"{batch / seconds:,.0f} images/s ({seconds * 1e3:.2f} ms / batch of {batch})"


class Trainer:
    """ResNet-50 + linear head over all crops, bf16 autocast, channels_last, SGD."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        backbone = torchvision.models.resnet50(weights=None)
        backbone.fc = nn.Identity()
        self.backbone = backbone.to(setup.device, memory_format=torch.channels_last)
        self.head = nn.Linear(2048, setup.classes).to(setup.device)
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.labels = torch.randint(0, setup.classes, (setup.train_batch,), device=setup.device)

    def step(self, crops: list[Tensor]) -> None:
        with torch.autocast(self.setup.device.type, dtype=torch.bfloat16):
            global_feats = self.backbone(torch.cat(crops[:1]))
            local_feats = self.backbone(torch.cat(crops[1:])) if len(crops) > 1 else None
            feats = global_feats if local_feats is None else torch.cat([global_feats, local_feats])
            loss = F.cross_entropy(self.head(feats).float(), self.labels.repeat(len(crops)))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def training_rows(setup: Setup) -> list[tuple[str, str, str]]:
    if setup.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer = Trainer(setup)
    aug = make_augmenter(setup)
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
    rows = [
        (
            "train step, pre-made device tensors",
            f"{n / t_pre:,.0f} images/s ({t_pre * 1e3:.1f} ms / step of {n})",
            "",
        ),
        (
            "train step, augmenter inline (same stream)",
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
                "train step, augmenter prefetched on a side stream",
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
    sections: list[tuple[str, Callable[[], list[tuple[str, str, str]]]]] = [
        (
            "host syncs in forward (sync debug mode)",
            lambda: [("host syncs in forward (sync debug mode)", check_syncs(setup), "0")],
        ),
        (
            "augmenter alone",
            lambda: [
                (f"augmenter alone, batch {b}", augmenter_rate(setup, b), "≥ 10,000 images/s")
                for b in dict.fromkeys([setup.train_batch, setup.aug_batch])
            ],
        ),
        ("training step", lambda: training_rows(setup)),
    ]
    for title, run in sections:
        try:
            rows += run()
        except Exception as error:  # report and go on: device time is scarce
            traceback.print_exc()
            rows.append((title, f"FAILED: {type(error).__name__}: {error}", ""))
    print("| measurement | result | target |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ntotal wall time {time.perf_counter() - begin:.1f} s")


if __name__ == "__main__":
    main()
