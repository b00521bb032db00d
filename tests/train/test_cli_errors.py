"""protohead-train's policy for bad input: one line on stderr, exit status 2, no traceback.

The runs use relative paths (each test works in its own directory) so that the lines checked
here are exactly the ones quoted in docs/troubleshooting.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from protohead.train import trainer as train_trex
from protohead.train.checkpoint import load_checkpoint, save_checkpoint
from tests.train.test_trainer import FAKE, TINY

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"
RUN = [*FAKE, *TINY, "--output-dir", "runs/x"]
PREFIX = "protohead-train: error: "


def _error(capsys, argv: list[str]) -> str:
    """The one stderr line of a command that must fail with exit status 2."""
    code = train_trex.cli(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(PREFIX) and "Traceback" not in err
    return lines[0]


def _documented(line: str) -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert f"```text\n{line}\n```" in page, f"docs/troubleshooting.md should quote:\n{line}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A directory holding runs/x, a finished one-epoch run (never modified by the tests)."""
    root = tmp_path_factory.mktemp("cli")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert train_trex.cli(RUN) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def here(finished, tmp_path, monkeypatch) -> Path:
    """A fresh working directory with a copy of the finished run in runs/x."""
    shutil.copytree(finished / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--arch", "resnet34"], "--arch resnet18, this run has --arch resnet34"),
        (["--memory-size", "16"], "--memory-size 2048, this run has --memory-size 16"),
        (["--small-input-stem"], "--no-small-input-stem, this run has --small-input-stem"),
        (["--preset", "trex-star"], "--preset trex --projector-hidden-layers 3, this run has"),
    ],
)
def test_resume_with_other_settings_names_what_differs(here, capsys, flags, expected):
    before = (here / "runs/x/checkpoint.pth").read_bytes()
    line = _error(capsys, [*RUN, "--epochs", "2", *flags])
    assert line.startswith(f"{PREFIX}cannot resume from runs/x/checkpoint.pth: it was trained")
    assert expected in line and line.endswith("use another --output-dir or the same settings")
    assert (here / "runs/x/checkpoint.pth").read_bytes() == before
    if flags[0] == "--arch":
        _documented(line)


def _edit_checkpoint(path: Path, **changes) -> None:
    state = load_checkpoint(path)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_checkpoint(state, path)


@pytest.mark.parametrize(
    ("edit", "flags"),
    [
        ({}, ["--resume", "nope.pth"]),
        ({"optimizer": None, "scheduler": None}, []),
        # An older checkpoint, without the preset: the model's shapes are checked instead.
        ({"preset": None}, ["--memory-size", "16", "--epochs", "2"]),
        ({}, ["--batch-size", "2", "--epochs", "2"]),
        ({}, ["--classes", "0-4"]),
    ],
    ids=["missing", "not-resumable", "model-misfit", "schedule", "classes"],
)
def test_resume_errors_are_one_line(here, capsys, edit, flags):
    if edit:
        _edit_checkpoint(here / "runs/x/checkpoint.pth", **edit)
    before = (here / "runs/x/checkpoint.pth").read_bytes()
    line = _error(capsys, [*RUN, *flags])
    if flags[:1] == ["--classes"]:  # a variant of the documented "trained with" line
        assert "trained with no --classes, this run has --classes 0,1,2,3,4;" in line
    else:
        _documented(line)
    assert (here / "runs/x/checkpoint.pth").read_bytes() == before


def test_resume_on_data_with_another_class_count_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _folders(tmp_path / "data")
    argv = ["--data-dir", "data", *FOLDER, "--batch-size", "2"]
    assert train_trex.cli(argv) == 0
    for split in ("train", "val"):  # the data directory gained a class since
        (tmp_path / "data" / split / "c").mkdir()
        Image.new("RGB", (30, 30)).save(tmp_path / "data" / split / "c" / "0.png")
    _documented(_error(capsys, [*argv, "--epochs", "2"]))


def test_resume_from_a_backbone_export_points_to_init_from(here, capsys):
    line = _error(capsys, [*RUN, "--resume", "runs/x/backbone.pth", "--output-dir", "runs/y"])
    assert "is a backbone export" in line and "use --init-from" in line
    _documented(line)


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_unreadable_checkpoint_is_one_line(here, capsys, kind):
    path = here / "runs/x/checkpoint.pth"
    data = path.read_bytes()
    path.write_bytes(b"" if kind == "empty" else data[: len(data) // 2])
    line = _error(capsys, RUN)
    assert line.startswith(f"{PREFIX}cannot resume from runs/x/checkpoint.pth: it is not readable")
    if kind == "empty":
        _documented(line)


def test_rerunning_a_finished_run_says_it_is_complete(here, capsys):
    checkpoint, backbone = here / "runs/x/checkpoint.pth", here / "runs/x/backbone.pth"
    before = checkpoint.read_bytes(), backbone.stat().st_mtime_ns
    assert train_trex.cli(RUN) == 0
    out = capsys.readouterr().out
    assert "run in runs/x is complete: 1/1 epochs; nothing to do" in out
    assert "resumed" not in out and "backbone weights" not in out
    assert (checkpoint.read_bytes(), backbone.stat().st_mtime_ns) == before


def test_a_finished_run_without_its_backbone_writes_it(here, capsys):
    (here / "runs/x/backbone.pth").unlink()
    assert train_trex.cli(RUN) == 0
    assert "writing its missing backbone.pth" in capsys.readouterr().out
    state = torch.load(here / "runs/x/backbone.pth", weights_only=True)
    assert "conv1.weight" in state


def test_debug_reraises_with_the_traceback(here):
    with pytest.raises(train_trex.UsageError, match="this run has --arch resnet34"):
        train_trex.cli([*RUN, "--arch", "resnet34", "--debug"])


def _folders(root: Path, empty: str | None = None, splits=("train", "val")) -> None:
    for split in splits:
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            if f"{split}/{name}" != empty:
                Image.new("RGB", (30, 30), (90, 20, 50)).save(folder / "0.png")


FOLDER = [*TINY, "--global-crop-size", "24", "--local-crop-size", "12", "--output-dir", "runs/d"]


@pytest.mark.parametrize(
    "argv",
    [
        [*TINY, "--output-dir", "runs/d"],
        ["--data-dir", "noval", *FOLDER],
        ["--data-dir", "data", *FOLDER],
        [*FAKE, *TINY, "--arch", "resnet-50"],
        [*FAKE, *TINY, "--batch-size", "512", "--output-dir", "runs/b"],
        [*FAKE, *TINY, "--init-from", "nope.pth"],
        [*FAKE, *TINY, "--epochs", "0"],
        [*FAKE, *TINY, "--device", "gpu"],
    ],
    ids=["no-data", "no-val", "empty-class", "arch", "batch", "init-from", "epochs", "device"],
)
def test_usage_errors_are_one_line(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    _folders(tmp_path / "data", empty="train/b")
    _folders(tmp_path / "noval", splits=("train",))
    _documented(_error(capsys, argv))
    assert not (tmp_path / "runs" / "b" / "checkpoint.pth").exists()


def test_float_flags_out_of_range_are_one_line(capsys):
    line = _error(capsys, [*FAKE, *TINY, "--momentum", "1.5"])
    assert line == f"{PREFIX}--momentum must be in [0, 1], got 1.5"
    assert _error(capsys, [*FAKE, *TINY, "--lr", "nan"]) == f"{PREFIX}--lr must be >= 0, got nan"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(capsys):
    _documented(_error(capsys, [*FAKE, *TINY, "--device", "cuda"]))


def test_init_from_weights_of_another_arch_is_one_line(here, capsys):
    line = _error(capsys, [*RUN, "--arch", "resnet34", "--init-from", "runs/x/backbone.pth",
                           "--output-dir", "runs/i"])  # fmt: skip
    _documented(line)
    assert not (here / "runs/i/checkpoint.pth").exists()


def test_explicit_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    _documented(_error(capsys, [*FAKE, *TINY, "--tensorboard"]))


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "protohead.train", *FAKE, *TINY, "--arch", "resnet-50"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{PREFIX}--arch 'resnet-50' is not a torchvision classification model (did you mean "
        "resnet50?); see "
        "torchvision.models.list_models(module=torchvision.models), or use timm:NAME"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fused-memory", "maybe"], "argument --fused-memory: invalid choice: 'maybe'"),
        (["--preset", "tres"], "argument --preset: invalid choice: 'tres'"),
        (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_parser_errors_are_one_line_too(capsys, argv, message):
    # argparse's own errors used to print the 50-line usage block first.
    with pytest.raises(SystemExit) as exit_info:
        train_trex.cli(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith(PREFIX + message), err
