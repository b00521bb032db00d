"""Usage errors, help text and report protection of ``python -m protohead.evaluation``."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from protohead.evaluation import cli, cli_args, sources
from protohead.evaluation.cli import main
from protohead.evaluation.loading import UnreadableCheckpointError
from protohead.model import TReX

PROG = "python -m protohead.evaluation"
FAKE = ["--dataset", "fake", "--fake-trainval", "40", "--fake-test", "20", "--fake-classes", "4",
        "--fake-image-size", "16"]  # fmt: skip
FAST = ["--crop", "16", "--seeds", "0", "--grid-points", "3", "--refine-steps", "0",
        "--c-min", "1e-2", "--c-max", "1e1", "--no-progress", "--no-cache", "-q"]  # fmt: skip


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes loading any weights fail the test, and records the attempt."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args))
        raise AssertionError("the model must not be loaded for a usage error")

    monkeypatch.setattr(sources, "load_backbone", refuse)
    monkeypatch.setattr(sources, "load_checkpoint_backbone", refuse)
    return attempts


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(argv)``, require exit status 2 and one stderr line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err  # one line, no usage block, no traceback
    assert lines[0].startswith(f"{PROG}: error: ")
    return lines[0][len(f"{PROG}: error: ") :]


def training_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    model = TReX("resnet18", num_classes=3, projector_hidden_dim=16, projector_out_dim=8,
                 memory_size=8)  # fmt: skip
    args = {"arch": "resnet18", "dataset": "fake"}
    preset = {"name": "baseline", "global_crop_size": 16}
    torch.save({"model": model.state_dict(), "args": args, "preset": preset}, path)


def test_paths_that_do_not_exist_are_usage_errors_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: list[str]
) -> None:
    out, cache = tmp_path / "r.json", tmp_path / "cache"
    missing = str(tmp_path / "missing")
    base = ["--arch", "resnet18", *FAKE, "--output", str(out), "--cache-dir", str(cache)]
    cases = [
        (["--checkpoint", missing, *FAKE, "--output", str(out)],
         f"--checkpoint '{missing}' does not exist"),
        ([*base, "--weights", missing], f"--weights '{missing}' does not exist"),
        ([*base, "--image-folder", "mine", missing, str(tmp_path)],
         f"--image-folder mine '{missing}' does not exist"),
        ([*base, "--image-folder", "mine", str(tmp_path), str(out.parent / "r.txt")],
         "--image-folder mine '.*r.txt' does not exist"),
        ([*base, "--image-list", "cog", missing, "a.txt", "b.txt"],
         f"--image-list cog '{missing}' does not exist"),
        ([*base, "--data-root", missing], f"--data-root '{missing}' does not exist"),
        ([*base, "--fashion-mnist-root", missing],
         f"--fashion-mnist-root '{missing}' does not exist"),
        ([*base, "--inat2018-root", missing], f"--inat2018-root '{missing}' does not exist"),
        ([*base, "--data-root", str(tmp_path), "--sun397-lists", "Training_01.txt", "T.txt"],
         "--sun397-lists '.*SUN397/Training_01.txt' does not exist"),
    ]  # fmt: skip
    for argv, message in cases:
        assert re.fullmatch(message, usage_error(argv, capsys)), argv
    assert no_model == []
    assert sorted(tmp_path.iterdir()) == []  # no report, no cache directory


def test_every_usage_mistake_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: list[str]
) -> None:
    out = tmp_path / "r.json"
    base = ["--arch", "resnet18", *FAKE, "--output", str(out)]
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, on any machine
    cases = [
        (["--arch", "resnet18", "--checkpoint", "x.pth"],
         "argument --checkpoint: not allowed with argument --arch"),
        ([*base, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        ([*base, "--train-top1", "76.5"], r"--train-top1 must be a fraction in \[0, 1\], got 76.5"),
        ([*base, "--seeds", "0", "0"], r"--seeds must be distinct, got \[0, 0\]"),
        ([*base, "--device", absent],
         rf"--device must be a device of this machine \(.*\), got '{absent}'"),
        ([*base, "--device", "tpu"],
         "--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'"),
        ([*base, "--mean", "0.5", "0.5", "0.5"], "--mean and --std go together: .*"),
        ([*base, "--crop", "300", "--resize", "256"],
         r"crop must be in \[1, resize=256\], got 300"),
        ([*base, "--grid-points", "1"], "grid_points must be >= 2, got 1"),
        ([*base, "--output", str(tmp_path)],
         f"--output '{tmp_path}' is a directory; give the report's file path"),
    ]  # fmt: skip
    for argv, message in cases:
        assert re.fullmatch(message, usage_error(argv, capsys)), argv
    assert no_model == []
    assert not out.exists()


def test_unreadable_checkpoints_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.pth"
    training_checkpoint(good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    cases = {
        "truncated.pth": r"cannot be loaded \(truncated, still being written, or not a PyTorch "
        r"file\): RuntimeError: PytorchStreamReader failed reading zip archive: .*",
        "empty.pth": r"is empty \(0 bytes\): an interrupted copy or save\?",
        "notes.pth": r"cannot be loaded .*",
    }
    out = tmp_path / "r.json"
    for name, message in cases.items():
        path = tmp_path / name
        for flag in (["--checkpoint", str(path)], ["--arch", "resnet18", "--weights", str(path)]):
            what = "checkpoint" if flag[0] == "--checkpoint" else "weights"
            line = usage_error([*flag, *FAKE, "--output", str(out)], capsys)
            assert re.fullmatch(f"{what} '{re.escape(str(path))}' {message}", line), line
    assert not out.exists()
    # --debug shows the underlying error (and its traceback) instead of the one line.
    with pytest.raises(UnreadableCheckpointError, match="is empty"):
        main(["--checkpoint", str(tmp_path / "empty.pth"), *FAKE, "--output", str(out), "--debug"])


def test_training_checkpoint_given_as_weights_suggests_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "checkpoint.pth"
    training_checkpoint(ckpt)
    line = usage_error(["--arch", "resnet18", "--weights", str(ckpt), *FAKE, "--output",
                        str(tmp_path / "r.json")], capsys)  # fmt: skip
    assert line == (
        f"weights '{ckpt}' is a training checkpoint (a dict with 'model'), not a backbone "
        "state_dict: load it with load_checkpoint_backbone (--checkpoint)"
    )


def test_help_gives_every_flag_a_text_and_each_default_once() -> None:
    for plot in (False, True):
        parser = cli_args.build_parser(plot=plot)
        formatter = parser._get_formatter()
        for action in parser._actions:
            assert action.help and action.help.strip(), action.dest
            shown = formatter._expand_help(action)  # the text --help prints for the flag
            assert shown.count("default") <= 1, shown
            shows_default = action.default not in (None, False, [], (), argparse.SUPPRESS)
            if action.option_strings and shows_default:
                assert f"(default: {action.default})" in shown, shown
        assert "%(default)" not in parser.format_help()


def test_help_runs_from_the_shell() -> None:
    run = subprocess.run([sys.executable, "-m", "protohead.evaluation", "--help"],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 0 and "(default: 0.2)" in run.stdout, run.stderr
    assert "--overwrite" in run.stdout and "--debug" in run.stdout


def test_an_existing_report_survives_every_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r.json"
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    argv = ["--arch", "resnet18", "--weights", str(weights), *FAKE, *FAST, "--output", str(out)]
    assert main(argv) == 0
    good = out.read_text()
    assert json.loads(good)["summary"]["complete"] is True

    # 1. Without --overwrite: refused before anything runs.
    line = usage_error(argv, capsys)
    assert line.startswith(f"--output '{out}' exists: pass --overwrite to replace it")
    # 2. A run that fails to load its model.
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    usage_error([*argv[:2], "--weights", str(empty), *argv[4:], "--overwrite"], capsys)

    # 3. A run that crashes mid-way (an interrupt, a bug) writes nothing.
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(cli, "linear_probe", interrupted)
        with pytest.raises(KeyboardInterrupt):
            main([*argv, "--overwrite"])
    # 4. A run that completes with a missing dataset: its report goes beside the good one.
    partial = [*argv, "--dataset", "dtd", "--data-root", str(tmp_path), "--overwrite"]
    assert main(partial) == 3
    assert out.read_text() == good
    aside = json.loads((tmp_path / "r.incomplete.json").read_text())
    assert aside["summary"]["missing"] == ["dtd"]
    assert f"kept the existing {out} (this run is incomplete)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.pth",
        "r.incomplete.json",
        "r.json",
        "r18.pth",
    ]  # fmt: skip  (no temporary files left behind)
    # 5. A complete run with --overwrite replaces it.
    assert main([*argv, "--seeds", "1", "--overwrite"]) == 0
    assert json.loads(out.read_text())["settings"]["seeds"] == [1]
