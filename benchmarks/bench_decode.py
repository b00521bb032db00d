"""Input pipeline throughput: PIL decode + MultiCropTransform against bytes -> batched decode ->
batched crops (``--decode batched`` of the training script).

t-ReX views (1 global 224 px + 8 local 96 px crops, all ops at their default probabilities) from
synthetic JPEGs (smooth colour fields plus noise, quality 90) of ImageNet's typical 500 x 375
px and of 256 x 256 px, already in memory (file reads excluded for both). Per source size:

- ``pil``: per image, ``PIL.Image.open(...).convert("RGB")`` then ``MultiCropTransform``, what a
  DataLoader worker does today (``multicrop_collate`` excluded, which favours PIL);
- ``batched``: :class:`~protohead.data.batched_decode.BatchedDecoder` (one ``decode_jpeg`` call for
  the batch, padding) then :class:`~protohead.augment.batched.BatchedMultiCrop` on the padded batch;
- the decode steps alone (PIL per image; the batched decoder), to show their share.

On the CPU everything runs on one thread (``torch.set_num_threads(1)``) and rates are images per
CPU-second (process time, which other load on a shared machine does not inflate). With
``--device cuda`` the batched rows decode (nvJPEG) and crop on the GPU and are timed by wall clock
after ``torch.cuda.synchronize()``; the PIL rows stay on one CPU core. Pipelines alternate within
each round (A/B interleaved), the best round of each is reported. Prints a markdown table.

    python benchmarks/bench_decode.py                  # batch 32, 3 rounds, CPU
    python benchmarks/bench_decode.py --quick          # small smoke run
    python benchmarks/bench_decode.py --device cuda    # batched side on the GPU
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from protohead.augment.batched import BatchedMultiCrop
from protohead.augment.multicrop import MultiCropTransform
from protohead.data.batched_decode import BatchedDecoder

SIZES = ((375, 500), (256, 256))  # (h, w)


def synthetic_jpegs(count: int, h: int, w: int, seed: int = 0) -> list[torch.Tensor]:
    """JPEG files (as uint8 tensors) of smooth random colour fields with noise, quality 90."""
    g = np.random.default_rng(seed)
    files = []
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for _ in range(count):
        a = g.uniform(0, 255, (3, 3))
        field = a[:, 0, None, None] + a[:, 1, None, None] * xx + a[:, 2, None, None] * yy
        pixels = np.clip(field.transpose(1, 2, 0) * 0.5 + g.normal(0, 15, (h, w, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
        files.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--device", default="cpu", help="device of the batched side (cpu, cuda)")
    args = parser.parse_args()
    batch, rounds = (4, 1) if args.quick else (args.batch, args.rounds)
    if batch < 1 or rounds < 1:
        parser.error(f"--batch and --rounds must be >= 1, got {args.batch} and {args.rounds}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    cpu = MultiCropTransform()
    aug = BatchedMultiCrop.from_transform(cpu).to(device)
    decoder = BatchedDecoder(device)
    generator = torch.Generator(device).manual_seed(0)
    labels = torch.zeros(batch, dtype=torch.int64)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def rate(fn: Callable[[], object], on_device: bool) -> float:
        if on_device and device.type != "cpu":  # accelerator: wall clock around synced work
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return batch / (time.perf_counter() - start)
        start = time.process_time()
        fn()
        return batch / (time.process_time() - start)

    rows: list[tuple[str, dict[str, float]]] = []
    for h, w in SIZES:
        files = synthetic_jpegs(batch, h, w)

        def pil_decode(files: list[torch.Tensor] = files) -> list[Image.Image]:
            return [Image.open(io.BytesIO(f.numpy().tobytes())).convert("RGB") for f in files]

        def pil_pipeline() -> object:
            return [cpu(image) for image in pil_decode()]

        def batched_decode(files: list[torch.Tensor] = files) -> object:
            return decoder(files, labels)

        def batched_pipeline(files: list[torch.Tensor] = files) -> object:
            decoded = decoder(files, labels)
            return aug(decoded.images, decoded.sizes, generator=generator)

        runs = {
            "pil": (pil_pipeline, False),
            "batched": (batched_pipeline, True),
            "pil decode": (pil_decode, False),
            "batched decode": (batched_decode, True),
        }
        for fn, _ in runs.values():  # warm-up (nvJPEG and allocator initialisation)
            fn()
        best = dict.fromkeys(runs, 0.0)
        for _ in range(rounds):
            for name, (fn, on_device) in runs.items():
                best[name] = max(best[name], rate(fn, on_device))
        rows.append((f"{w} x {h}", best))

    unit = "images per CPU-second" if device.type == "cpu" else "images/s (batched: GPU wall clock)"
    print(
        f"1 x 224 + 8 x 96 crops from synthetic JPEGs (quality 90), 1 CPU thread, batched side on "
        f"{device}, batch {batch}, best of {rounds} interleaved rounds, {unit}\n"
    )
    print("| source | PIL decode + MultiCropTransform | bytes -> BatchedDecoder -> "
          "BatchedMultiCrop | speed-up | PIL decode alone | batched decode alone |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for source, best in rows:
        print(
            f"| {source} | {best['pil']:.1f} | {best['batched']:.1f} | "
            f"**{best['batched'] / best['pil']:.2f}×** | {best['pil decode']:.1f} | "
            f"{best['batched decode']:.1f} |"
        )


if __name__ == "__main__":
    main()
