"""End-to-end test of examples/eval_demo.py on a fabricated Fashion-MNIST (tiny CPU runs)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
import torch

from protohead.evaluation.metrics import log_odds

ROOT = Path(__file__).resolve().parents[1]


def _load_demo():
    spec = importlib.util.spec_from_file_location("eval_demo", ROOT / "examples" / "eval_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_are_the_documented_study() -> None:
    args = _load_demo().get_args_parser().parse_args([])
    assert args.presets == ["baseline", "trex"] and args.train_seeds == [0, 1, 2]
    assert (args.seen, args.unseen) == ("0,1,5,7,8", "2,3,4,6,9")
    assert sorted(map(int, f"{args.seen},{args.unseen}".split(","))) == list(range(10))


def test_summary_is_mean_and_sample_std_per_preset() -> None:
    demo = _load_demo()
    runs = [
        {"preset": p, "seed": s, "seen_top1": a, "unseen_top1": b, "unseen_log_odds": c,
         "train_seconds": t}
        for p, s, a, b, c, t in [("baseline", 0, 0.9, 0.7, 0.8, 10.0),
                                 ("baseline", 1, 0.8, 0.6, 0.4, 12.0),
                                 ("trex", 0, 0.95, 0.8, 1.4, 20.0)]
    ]  # fmt: skip
    baseline, trex = demo.summarise(runs)
    assert baseline["preset"] == "baseline" and baseline["runs"] == 2
    assert baseline["seen_top1"]["mean"] == pytest.approx(0.85)
    assert baseline["unseen_log_odds"]["std"] == pytest.approx(statistics.stdev([0.8, 0.4]))
    assert trex["runs"] == 1 and trex["unseen_top1"] == {"mean": 0.8, "std": None}


@pytest.mark.slow
def test_demo_trains_each_preset_per_seed_and_probes_unseen_classes(
    tmp_path: Path, fake_fashion_mnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = _load_demo()
    data, out = fake_fashion_mnist, tmp_path / "out"
    argv = ["--data-root", str(data), "--output-dir", str(out), "--epochs", "1",
            "--batch-size", "8", "--max-steps-per-epoch", "2", "--max-per-class", "10",
            "--train-seeds", "0", "1", "--probe-seeds", "0", "1", "--threads", "1"]  # fmt: skip
    args = demo.get_args_parser().parse_args(argv)
    runs = demo.main(args)
    assert [(r["preset"], r["seed"]) for r in runs] == [
        ("baseline", 0), ("baseline", 1), ("trex", 0), ("trex", 1)
    ]  # fmt: skip
    for row in runs:
        run_dir = out / row["preset"] / f"seed{row['seed']}"
        report = json.loads((run_dir / "transfer.json").read_text())
        (entry,) = report["datasets"]
        # The probe saw only the unseen classes 2,3,4,6,9, at the checkpoint's own 28 px.
        assert entry["name"] == "fashion-mnist[2,3,4,6,9]" and entry["num_classes"] == 5
        assert (entry["num_trainval"], entry["num_test"]) == (50, 50)
        assert entry["seeds"] == [0, 1]
        assert report["settings"]["transform"]["crop"] == 28
        assert report["settings"]["transform"]["mean"] == [0.286] * 3
        # The fake images' brightness encodes the class: even a barely trained backbone's
        # features separate the unseen classes (chance is 20%).
        assert row["unseen_top1"] == entry["accuracy"] > 0.6
        assert (
            row["unseen_log_odds"]
            == entry["log_odds"]
            == pytest.approx(log_odds(entry["accuracy"]))
        )
        assert row["seen_top1"] == report["train_top1"]
        ckpt = torch.load(row["checkpoint"], map_location="cpu", weights_only=False)
        assert list(ckpt["args"]["classes"]) == [0, 1, 5, 7, 8]
        assert ckpt["args"]["seed"] == row["seed"]
        assert report["train_top1"] == pytest.approx(ckpt["metrics"]["val_top1"] / 100)
    # Two seeds of one preset are two different trainings.
    seeds = [torch.load(out / "trex" / f"seed{s}" / "checkpoint.pth", weights_only=False)
             for s in (0, 1)]  # fmt: skip
    first = next(k for k in seeds[0]["model"] if k.endswith("conv1.weight"))
    assert not torch.equal(seeds[0]["model"][first], seeds[1]["model"][first])

    saved = json.loads((out / "eval_demo.json").read_text())
    assert saved["runs"] == runs
    by_preset = {s["preset"]: s for s in saved["summary"]}
    for preset in ("baseline", "trex"):
        values = [r["unseen_log_odds"] for r in runs if r["preset"] == preset]
        assert by_preset[preset]["runs"] == 2
        assert by_preset[preset]["unseen_log_odds"]["mean"] == pytest.approx(
            statistics.fmean(values)
        )
        assert by_preset[preset]["unseen_log_odds"]["std"] == pytest.approx(
            statistics.stdev(values)
        )
    table = capsys.readouterr().out
    assert "| baseline | 0 |" in table and "| trex | 1 |" in table
    assert "mean ± standard deviation over training seeds" in table
    assert "| trex | 2 |" in table  # the summary row: preset, runs
    figure = out / "tradeoff.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not figure.exists() and "no figure" in table
    else:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
