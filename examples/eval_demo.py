"""Concept-generalisation demo on real data: does t-ReX transfer to unseen classes better?

The ImageNet-CoG idea of the paper's evaluation (Sariyildiz et al., ICLR 2023) at Fashion-MNIST
scale, on a CPU:

1. pretrain a ResNet-18 with ``protohead-train`` on the *seen* classes 0-4 (T-shirt,
   trouser, pullover, dress, coat), once per preset (``baseline`` and ``trex`` by default);
2. freeze each backbone and run the transfer protocol (``python -m protohead.evaluation``:
   pooled features, tuned logistic regression, several seeds) on the *unseen* classes 5-9
   (sandal, shirt, sneaker, bag, ankle boot);
3. print one row per preset: top-1 on the seen classes' test images, and the linear-probe top-1
   and log-odds on the unseen classes.

``make eval-demo`` runs it (10 to 12 minutes on 2 CPU cores, setup included). Both steps
are the public command-line tools, run as subprocesses, so every row can be reproduced by hand
from the commands this script prints. Results go to ``<output-dir>/eval_demo.json`` (written
atomically) next to each run's checkpoint and transfer report.

    python examples/eval_demo.py --output-dir runs/eval-demo
    python examples/eval_demo.py --presets baseline trex trex-star --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from protohead.atomic_files import atomic_write

ROOT = Path(__file__).resolve().parents[1]

# Fashion-MNIST's own statistics, as the training script's --small-images runs use.
FASHION_MEAN, FASHION_STD = "0.2860", "0.3530"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["baseline", "trex"], help="training presets")
    p.add_argument("--seen", default="0-4", help="pretraining classes (default 0-4)")
    p.add_argument("--unseen", default="5-9", help="transfer classes (default 5-9)")
    p.add_argument("--epochs", type=int, default=5, help="pretraining epochs per preset")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.4, help="base lr (scaled by batch / 256)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per step")
    p.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST IDX directory")
    p.add_argument("--output-dir", type=Path, default=Path("runs/eval-demo"))
    p.add_argument(
        "--max-steps-per-epoch", type=int, default=None, help="cap pretraining (smoke runs)"
    )
    p.add_argument(
        "--max-per-class", type=int, default=None, help="cap transfer images per class (smoke)"
    )
    p.add_argument("--arch", default="resnet18")
    return p


def train_command(args: argparse.Namespace, preset: str, out: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "protohead.train", "--dataset", "fashion-mnist",
        "--classes", args.seen,
        "--arch", args.arch, "--preset", preset, "--small-images", "--batched-aug",
        "--color-jitter-p", "0", "--grayscale-p", "0", "--device", "cpu", "--workers", "0",
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--warmup-epochs", "0.5", "--print-freq", "100", "--output-dir", str(out),
    ]  # fmt: skip
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.data_root is not None:
        cmd += ["--data-root", str(args.data_root)]
    if args.max_steps_per_epoch is not None:
        cmd += ["--max-steps-per-epoch", str(args.max_steps_per_epoch)]
    return cmd


def eval_command(args: argparse.Namespace, preset: str, out: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "protohead.evaluation", "--checkpoint",
        str(out / "checkpoint.pth"), "--name", preset, "--dataset", "fashion-mnist",
        "--fashion-mnist-classes", args.unseen, "--resize", "28", "--crop", "28",
        "--mean", *[FASHION_MEAN] * 3, "--std", *[FASHION_STD] * 3, "--device", "cpu",
        "--seeds", *map(str, args.seeds), "--no-progress", "--cache-dir", str(out / "features"),
        "--out", str(out / "transfer.json"),
    ]  # fmt: skip
    if args.data_root is not None:
        cmd += ["--fashion-mnist-root", str(args.data_root)]
    else:  # the Debian package's files when installed, else torchvision's download
        cmd += ["--download"]
    if args.max_per_class is not None:
        cmd += ["--max-per-class", str(args.max_per_class)]
    return cmd


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    # The checkout first, so the demo runs from a clone without installing protohead.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run(cmd, check=True, env=env)


def format_rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    head = (
        f"| preset | seen {args.seen}: test top-1 % | unseen {args.unseen}: linear-probe "
        f"top-1 % | unseen {args.unseen}: log-odds | pretrain s |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {100 * r['seen_top1']:.2f} | {100 * r['unseen_top1']:.2f} "
            f"± {100 * r['unseen_top1_std']:.2f} | {r['unseen_log_odds']:.3f} | "
            f"{r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.presets:
        out = args.output_dir / preset
        begin = time.perf_counter()
        run(train_command(args, preset, out))
        train_seconds = time.perf_counter() - begin
        run(eval_command(args, preset, out))
        report = json.loads((out / "transfer.json").read_text())
        entry = report["datasets"][0]
        rows.append(
            {
                "preset": preset,
                "seen_top1": report["train_top1"],
                "unseen_top1": entry["accuracy"],
                "unseen_top1_std": entry.get("accuracy_std") or 0.0,
                "unseen_log_odds": entry["log_odds"],
                "train_seconds": train_seconds,
                "checkpoint": str(out / "checkpoint.pth"),
            }
        )
    with atomic_write(args.output_dir / "eval_demo.json", "w") as handle:
        json.dump({"rows": rows, "args": _jsonable(args)}, handle, indent=2)
    print("\n" + format_rows(args, rows))
    return rows


def _jsonable(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
