"""GPU training-step throughput of t-ReX / t-ReX* next to the supervised baseline (ResNet-50).

Synthetic tensors already on the GPU (no data loading), bf16 autocast, channels_last, SGD with
momentum, the paper's crops (1 x 224 px global + 8 x 96 px local, Sariyildiz et al., ICLR
2023). Rows:

- ``baseline 1x224``: plain supervised training, one 224 px crop per image;
- ``baseline multi-crop``: the baseline model on the t-ReX crops (same backbone work);
- ``trex`` / ``trex-star``: the full models (projector, cosine classifier, OCM memory and
  EMA teacher).

The ``vs baseline multi-crop`` column is the t-ReX overhead on the same crops (the EMA forward on
the global crop is about +14%). A batched GPU multi-crop row measures the augmentation alone
on uint8 256 px images. Takes about 2 minutes on an H100::

    python benchmarks/gpu_check_train.py
    python benchmarks/gpu_check_train.py --device cpu --quick   # smoke run anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch

from protohead import TReX, get_preset
from protohead.train.trainer import sgd_implementation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call after ``warmup`` calls (synchronised at both ends)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _step_fn(
    model: TReX,
    crops: list[torch.Tensor],
    labels: torch.Tensor,
    dtype: torch.dtype | None,
    impl: str = "for-loop",
) -> Callable[[], None]:
    sgd = sgd_implementation(impl, labels.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **sgd)
    device = labels.device

    def step() -> None:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            logits = model(crops, labels)
        loss = model.loss(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default=None, help="default: resnet50 (resnet18 with --quick)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU smoke run")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the student")
    parser.add_argument(
        "--speedups",
        action="store_true",
        help="add t-ReX rows with the fused optimiser, torch.compile (student and teacher) and "
        "CUDA graphs (compile mode reduce-overhead): the step before/after",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    quick = args.quick
    arch = args.arch or ("resnet18" if quick else "resnet50")
    batches = args.batch_size or ([4] if quick else [64, 128])
    steps = args.steps or (2 if quick else 30)
    warmup = 1 if quick else 10
    global_size, local_size = (32, 16) if quick else (224, 96)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if not torch.cuda.is_bf16_supported():
            dtype = torch.float16
    fmt = torch.channels_last
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, arch {arch}, autocast {dtype}, channels_last, {steps} timed steps")
    print(f"{'run':<22} {'batch':>5} {'ms/step':>9} {'img/s':>8} {'vs baseline multi-crop':>23}")

    for batch in batches:
        gen = torch.Generator(device).manual_seed(0)
        labels = torch.randint(0, 1000, (batch,), device=device, generator=gen)
        global_crop = torch.randn(batch, 3, global_size, global_size, device=device, generator=gen)
        local_crops = [
            torch.randn(batch, 3, local_size, local_size, device=device, generator=gen)
            for _ in range(8)
        ]
        multi = [c.contiguous(memory_format=fmt) for c in [global_crop, *local_crops]]
        single = [multi[0]]
        rows: list[tuple[str, list[torch.Tensor], str, dict[str, Any]]] = [
            (f"baseline 1x{global_size}", single, "baseline", {}),
            ("baseline multi-crop", multi, "baseline", {}),
            ("trex", multi, "trex", {}),
            ("trex-star", multi, "trex-star", {}),
        ]
        if args.speedups:
            rows += [
                ("trex fused SGD", multi, "trex", {"impl": "fused"}),
                ("trex fused+compile", multi, "trex", {"impl": "fused", "mode": "default"}),
                (
                    "trex fused+cudagraph",
                    multi,
                    "trex",
                    {"impl": "fused", "mode": "reduce-overhead"},
                ),
            ]
        reference = None
        for label, crops, preset, options in rows:
            extra = {k: v for k, v in options.items() if k not in ("impl", "mode")}
            torch.manual_seed(0)
            kwargs = {**get_preset(preset).model_kwargs(), **extra}
            if quick and kwargs.get("memory_size", 0):
                kwargs["memory_size"] = 64
            model = TReX(arch, 1000, **kwargs, on_invalid="skip").to(device)
            model = model.to(memory_format=fmt)
            mode = options.get("mode", "default" if args.compile else None)
            if mode is not None:
                model.student.compile(mode=mode)
                if model.teacher is not None:
                    model.teacher.module.compile(mode=mode)
            model.train()
            impl = options.get("impl", "for-loop")
            try:
                step = _step_fn(model, crops, labels, dtype, impl)
                seconds = _time(step, steps, warmup, device)
            except Exception as err:  # one failing variant must not hide the other rows
                print(f"{label:<22} {batch:>5} FAILED: {type(err).__name__}: {err}"[:300])
                continue
            if label == "baseline multi-crop":
                reference = seconds
            ratio = f"{seconds / reference:.3f}x" if reference and label != rows[0][0] else ""
            print(
                f"{label:<22} {batch:>5} {1e3 * seconds:>9.1f} {batch / seconds:>8.0f} {ratio:>23}"
            )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    try:
        from protohead.augment.batched import BatchedMultiCrop
    except ImportError as err:  # another module; the training rows above do not need it
        print(f"BatchedMultiCrop unavailable: {err}")
        return
    aug = BatchedMultiCrop(
        get_preset("trex").multicrop_config(),
        output_dtype=dtype or torch.float32,
        channels_last=True,
    ).to(device)
    if quick:
        aug = BatchedMultiCrop(
            global_crop_size=global_size, local_crop_size=local_size, channels_last=True
        ).to(device)
    side = 40 if quick else 256
    batch = batches[-1]
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, device=device)
    gen = torch.Generator(device).manual_seed(0)
    seconds = _time(lambda: aug(images, generator=gen), steps, warmup, device)
    print(
        f"{'BatchedMultiCrop (aug)':<22} {batch:>5} {1e3 * seconds:>9.1f} {batch / seconds:>8.0f}"
    )


if __name__ == "__main__":
    main()
