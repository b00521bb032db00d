"""Tests for protohead.train.checkpoint: atomic saves, crash safety, RNG, resume lookup."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from protohead import TReX
from protohead.train.checkpoint import (
    BackboneExportError,
    CheckpointFormatError,
    find_resume_checkpoint,
    get_rng_state,
    load_checkpoint,
    read_training_checkpoint,
    save_checkpoint,
    set_rng_state,
)


def _tmp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_round_trip_holds_model_teacher_memory_and_plain_values(tmp_path):
    model = TReX(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 6)),
        num_classes=3,
        feature_dim=6,
        projector_hidden_dim=8,
        projector_out_dim=4,
        memory_size=5,
    )
    model.train()
    model([torch.randn(4, 3, 2, 2)], torch.tensor([0, 1, 2, 0]))
    path = save_checkpoint(
        {"model": model.state_dict(), "epoch": 2, "args": {"arch": "x", "lr": 0.1}},
        tmp_path / "ckpt.pth",
    )
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and loaded["args"] == {"arch": "x", "lr": 0.1}
    state = model.state_dict()
    assert set(loaded["model"]) == set(state)
    assert any(k.startswith("teacher.") for k in state)
    assert any(k.endswith("memory.features") for k in state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(loaded["model"][key], value), key
    assert _tmp_files(tmp_path) == []
    assert (path.stat().st_mode & 0o777) == 0o644


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert _tmp_files(tmp_path) == []


def test_process_killed_mid_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1}, path)
    marker = tmp_path / "writing"
    script = textwrap.dedent(
        f"""
        import time, torch
        from pathlib import Path
        from protohead.train.checkpoint import save_checkpoint

        def slow_save(obj, handle, *args, **kwargs):
            handle.write(b"half a checkpoint")
            handle.flush()
            Path({str(marker)!r}).touch()
            time.sleep(60)

        torch.save = slow_save
        save_checkpoint({{"epoch": 2}}, {str(path)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"writer did not start (exit code {proc.poll()})")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(path)["epoch"] == 1
    # The orphaned temporary file has another name, so it cannot shadow the checkpoint.
    assert len(_tmp_files(tmp_path)) == 1
    assert find_resume_checkpoint(None, tmp_path) == path


def test_rng_state_round_trip_restores_every_generator(tmp_path):
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)  # noqa: NPY002

    state = get_rng_state()
    expected = draw()
    save_checkpoint({"rng": state}, tmp_path / "rng.pth")
    draw()  # move every stream on
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    again = draw()
    assert again[0] == expected[0] and again[1] == expected[1]
    assert torch.equal(again[2], expected[2])


def test_set_rng_state_rejects_malformed_states_without_changing_anything():
    before = torch.get_rng_state()
    with pytest.raises(TypeError, match="state must be a mapping"):
        set_rng_state([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"state\['torch'\] must be a uint8 tensor"):
        set_rng_state({"python": random.getstate(), "torch": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"state\['numpy'\] must hold"):
        set_rng_state({"numpy": {"kind": "MT19937"}})
    assert torch.equal(torch.get_rng_state(), before)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint '.*missing.pth' does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"checkpoint '.*corrupt.pth' is not readable"):
        load_checkpoint(corrupt)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="must hold a dict"):
        load_checkpoint(tmp_path / "list.pth")


def test_save_checkpoint_rejects_non_mappings(tmp_path):
    with pytest.raises(TypeError, match="state must be a mapping, got list"):
        save_checkpoint([1], tmp_path / "x.pth")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_find_resume_checkpoint_prefers_explicit_then_output_dir(tmp_path):
    assert find_resume_checkpoint(None, tmp_path) is None
    auto = save_checkpoint({"epoch": 1}, tmp_path / "checkpoint.pth")
    assert find_resume_checkpoint(None, tmp_path) == auto
    other = save_checkpoint({"epoch": 5}, tmp_path / "other.pth")
    assert find_resume_checkpoint(other, tmp_path) == other
    with pytest.raises(FileNotFoundError, match=r"resume checkpoint '.*nope.pth' does not exist"):
        find_resume_checkpoint(tmp_path / "nope.pth", tmp_path)


def _current_states() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002


def _assert_states_equal(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    for x, y in zip(a[1], b[1], strict=True):
        assert np.array_equal(x, y)
    assert torch.equal(a[2], b[2])


def _with_numpy(**changes: object) -> dict:
    saved = get_rng_state()
    return {**saved, "numpy": {**saved["numpy"], **changes}}


@pytest.mark.parametrize(
    ("make_state", "match"),
    [
        (lambda: _with_numpy(keys=torch.zeros(624)), r"state\['numpy'\]\['keys'\] must be an int"),
        (
            lambda: _with_numpy(keys=torch.zeros(10, dtype=torch.long)),
            r"state\['numpy'\]\['keys'\] must be .* shape \(624,\)",
        ),
        (lambda: _with_numpy(keys=[0] * 624), r"state\['numpy'\]\['keys'\] must be .*got list"),
        (
            lambda: _with_numpy(keys=torch.full((624,), 2**33)),
            r"state\['numpy'\]\['keys'\] must hold values in \[0, 2\*\*32\)",
        ),
        (lambda: _with_numpy(kind="PCG64"), r"state\['numpy'\] must be a state"),
        (
            lambda: {**get_rng_state(), "torch": torch.zeros(10, dtype=torch.uint8)},
            r"state\['torch'\] must be a uint8 tensor of shape \(\d+,\)",
        ),
        (
            lambda: {**get_rng_state(), "torch": torch.empty(9, dtype=torch.uint8, device="meta")},
            r"state\['torch'\] holds a tensor on the meta device",
        ),
        (
            lambda: {**get_rng_state(), "cuda": [torch.zeros(16)]},
            r"state\['cuda'\] must be a list of 1-d uint8 tensors",
        ),
        (lambda: {**get_rng_state(), "cuda": "gpu"}, r"state\['cuda'\] must be a list"),
        (
            lambda: {**get_rng_state(), "python": (3, (1, 2), None)},
            r"state\['python'\] must be a state from random.getstate\(\)",
        ),
    ],
)
def test_set_rng_state_checks_every_part_before_restoring_any(make_state, match):
    state = make_state()  # valid parts hold the current states, the streams then move on
    random.random(), np.random.rand(), torch.rand(1)  # noqa: NPY002
    now = _current_states()
    with pytest.raises(ValueError, match=match):
        set_rng_state(state)
    _assert_states_equal(_current_states(), now)


def _training_checkpoint(**changes) -> dict:
    model = TReX("resnet18", 3, projector_hidden_dim=16, memory_size=8)
    state = {
        "model": model.state_dict(),
        "optimizer": {},
        "scheduler": {},
        "epoch": 2,
        "args": {"arch": "resnet18", "small_input_stem": False, "epochs": 5},
        "preset": {"name": "trex", "global_crop_size": 224},
        "num_classes": 3,
        "metrics": {"val_top1": 81.25},
    }
    return {**state, **changes}


def test_read_training_checkpoint_returns_the_run_summary(tmp_path):
    state = _training_checkpoint()
    run = read_training_checkpoint(save_checkpoint(state, tmp_path / "c.pth"))
    assert (run.arch, run.small_input_stem, run.epoch, run.epochs) == ("resnet18", False, 2, 5)
    assert (run.global_crop_size, run.num_classes, run.task_top1) == (224, 3, 0.8125)
    assert run.preset["name"] == "trex" and run.missing_resume_keys == ()
    student = {k[len("student.backbone.model.") :]: v for k, v in state["model"].items()
               if k.startswith("student.backbone.model.")}  # fmt: skip
    assert run.backbone_state.keys() == student.keys()
    assert all(torch.equal(run.backbone_state[k], v) for k, v in student.items())


def test_read_training_checkpoint_accepts_older_and_other_layouts(tmp_path):
    import argparse

    args = argparse.Namespace(arch="resnet18", train_top1=0.5)  # no metrics, flags as Namespace
    state = _training_checkpoint(args=args, metrics=None)
    del state["preset"], state["optimizer"], state["num_classes"]
    torch.save(state, tmp_path / "old.pth")
    run = read_training_checkpoint(tmp_path / "old.pth")
    assert (run.task_top1, run.preset, run.global_crop_size) == (0.5, {}, None)
    assert run.num_classes is None
    assert run.missing_resume_keys == ("optimizer",) and run.epochs is None


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: p.write_bytes(b""), CheckpointFormatError, "is not readable: the file is empty"),
        (
            lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 40),
            CheckpointFormatError,
            r"is not readable: its 44 bytes are not a complete torch.save archive",
        ),
        (
            lambda p: save_checkpoint({"conv1.weight": torch.ones(1)}, p),
            BackboneExportError,
            r"is a backbone export \(a bare state_dict of 1 tensors\), not a training checkpoint",
        ),
        (
            lambda p: save_checkpoint({"epoch": 1}, p),
            CheckpointFormatError,
            r"is not a training checkpoint: it has no 'model' \(keys \['epoch'\]\)",
        ),
        (
            lambda p: save_checkpoint(_training_checkpoint(args={}), p),
            CheckpointFormatError,
            r"must have 'args' with a string 'arch', got \{\}",
        ),
        (
            lambda p: save_checkpoint(
                _training_checkpoint(args={"arch": "resnet18", "small_input_stem": "yes"}), p
            ),
            CheckpointFormatError,
            r"must have a bool args\['small_input_stem'\], got 'yes'",
        ),
        (
            lambda p: save_checkpoint(_training_checkpoint(model={"head.w": torch.ones(1)}), p),
            CheckpointFormatError,
            r"has no backbone weights under any of .* \(top-level keys \['head'\]\)",
        ),
    ],
    ids=["empty", "truncated", "backbone", "no-model", "no-arch", "stem", "no-backbone"],
)
def test_read_training_checkpoint_names_what_is_wrong(tmp_path, make, error, match):
    path = tmp_path / "checkpoint.pth"
    make(path)
    with pytest.raises(error, match=rf"checkpoint '.*checkpoint.pth' {match}") as info:
        read_training_checkpoint(path)
    assert info.value.path == path
