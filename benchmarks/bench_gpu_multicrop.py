"""CPU throughput of the batched multi-crop augmenter against the PIL MultiCropTransform.

t-ReX views: 1 global 224 px + 8 local 96 px crops from 256 px uint8 images, all ops at their
default probabilities, decode excluded. Both run on one core (``torch.set_num_threads(1)``) in
the same process, interleaved over several rounds so machine noise hits them alike. The best
round of each is reported in images per CPU-second (process CPU time, which other load on a
shared machine does not inflate). The headline ratio leaves out batching the PIL crops; a
second row adds ``multicrop_collate``, which a training loader also pays. Prints a markdown
table (target >= 2x).

    python benchmarks/bench_gpu_multicrop.py            # batch 64, 5 rounds
    python benchmarks/bench_gpu_multicrop.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _timing import cpu_seconds
from PIL import Image

from protohead.augment.batched import BatchedMultiCrop
from protohead.augment.multicrop import MultiCropTransform
from protohead.data.collate import multicrop_collate


def images_per_second(fn: Callable[[], object], count: int) -> float:
    return count / cpu_seconds(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--batch", type=int, default=64, help="images per augmenter call")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--size", type=int, default=256, help="source image side")
    args = parser.parse_args()
    batch, rounds = (8, 2) if args.quick else (args.batch, args.rounds)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    cpu = MultiCropTransform()
    aug = BatchedMultiCrop.from_transform(cpu)
    images = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    generator = torch.Generator().manual_seed(0)

    def run_pil() -> list[list[torch.Tensor]]:
        return [cpu(img) for img in pil]

    def run_pil_collated() -> object:
        return multicrop_collate([(crops, 0) for crops in run_pil()])

    def run_batched() -> object:
        return aug(images, generator=generator)

    runs = {"pil": run_pil, "pil+collate": run_pil_collated, "batched": run_batched}
    for run in runs.values():  # warm-up
        run()
    rate = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            rate[name] = max(rate[name], images_per_second(run, batch))

    ours = rate["batched"]
    print(
        f"1 x 224 + 8 x 96 crops from {args.size} px uint8 images, 1 CPU thread, best of "
        f"{rounds} rounds, batch {batch}, images per CPU-second\n"
    )
    print("| pipeline | images/s | BatchedMultiCrop speed-up | target |")
    print("|---|---|---|---|")
    headline = ours / rate["pil"]
    print(
        f"| MultiCropTransform (PIL, per image) | {rate['pil']:.1f} | **{headline:.2f}×** | ≥ 2× |"
    )
    print(
        f"| MultiCropTransform + multicrop_collate | {rate['pil+collate']:.1f} | "
        f"{ours / rate['pil+collate']:.2f}× | |"
    )
    print(f"| BatchedMultiCrop (batched, on CPU) | {ours:.1f} | 1.00× | |")


if __name__ == "__main__":
    main()
