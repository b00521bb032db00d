"""End-to-end tests of protohead.train.trainer on tiny CPU runs (FakeData, resnet18)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from protohead import BackboneAdapter, TReX
from protohead.data import UnreadableImageError
from protohead.evaluation import load_checkpoint_backbone
from protohead.train import checkpoint as schema
from protohead.train import run_dir as trex_state
from protohead.train import trainer as train_trex
from protohead.train.checkpoint import load_checkpoint, read_training_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "--arch", "resnet18", "--small-images", "--device", "cpu", "--workers", "0",
    "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "2", "--print-freq", "1",
    "--projector-hidden-dim", "32", "--memory-init", "empty", "--threads", "1",
]  # fmt: skip
FAKE = ["--dataset", "fake", "--fake-size", "12", "6", "--fake-image-size", "24"]


def _args(out: Path, *extra: str, data: list[str] | None = None):
    argv = [*(FAKE if data is None else data), *TINY, "--output-dir", str(out), *extra]
    return train_trex.get_args_parser().parse_args(argv)


def _assert_same_state(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(actual[key], value), key
        else:  # e.g. the EMA teacher's update counter (extra state)
            assert actual[key] == value, key


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "preset", ["trex", "trex-star", "trex-plain-1", "trex-plain-3", "baseline"]
)
def test_every_preset_trains_two_steps(tmp_path, preset):
    metrics = train_trex.main(_args(tmp_path, "--preset", preset))
    assert metrics["step"] == 2 and metrics["epoch"] == 1
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert 0.0 <= metrics["val_top1"] <= metrics["val_top5"] <= 100.0
    assert [m["epoch"] for m in _metrics(tmp_path)] == [1]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pth")
    assert ckpt["preset"]["name"] == preset and ckpt["args"]["arch"] == "resnet18"
    assert ckpt["metrics"] == metrics
    has_memory = preset in ("trex", "trex-star")
    assert any(k.startswith("teacher.") for k in ckpt["model"]) == has_memory
    assert any(k.endswith("memory.features") for k in ckpt["model"]) == has_memory
    assert (tmp_path / "backbone.pth").is_file()


def test_batched_augmentation_path_is_reproducible(tmp_path):
    first = train_trex.main(_args(tmp_path / "a", "--batched-aug"))
    second = train_trex.main(_args(tmp_path / "b", "--batched-aug"))
    assert first["train_loss"] == second["train_loss"]
    assert first["val_top1"] == second["val_top1"]


def test_help_explains_every_preset_override():
    text = train_trex.get_args_parser().format_help()
    for field in train_trex.PRESET_FLAGS:
        assert f"--{field.replace('_', '-')}" in text
    for flag in ("--dataset", "--data-dir", "--resume", "--max-steps-per-epoch", "--seed"):
        assert flag in text
    for action in train_trex.get_args_parser()._actions:  # one default per flag, not two
        shown = train_trex.get_args_parser()._get_formatter()._get_help_string(action) or ""
        assert shown.count("(default:") <= 1, action.option_strings


def test_overrides_win_over_the_preset_and_none_is_a_value(tmp_path):
    args = _args(tmp_path, "--temperature", "none", "--num-local-crops", "3",
                 "--global-crop-scale", "0.5", "1")  # fmt: skip
    preset = train_trex.resolve_preset(args)
    assert preset.temperature is None and preset.num_local_crops == 3
    assert preset.global_crop_scale == (0.5, 1.0)
    assert preset.global_crop_size == 24  # --small-images used the fake image size
    assert train_trex.resolve_preset(_args(tmp_path)).temperature == 0.1


def test_metrics_log_is_replaced_atomically_and_truncated_on_resume(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    for epoch in (1, 2, 3):
        trex_state.append_metrics(path, {"epoch": epoch, "val_top1": 10.0 * epoch})
    before = path.read_text()

    def no_rename(*args):
        raise OSError("disk full")

    monkeypatch.setattr("protohead.atomic_files.os.replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        trex_state.append_metrics(path, {"epoch": 4, "val_top1": 40.0})
    assert path.read_text() == before  # a failed append leaves every earlier record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp left
    monkeypatch.undo()
    trex_state.truncate_metrics(path, start_epoch=2)  # epochs 3+ will be re-run
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]


def test_resume_into_another_schedule_stops_cleanly(tmp_path, capsys):
    extra = ("--epochs", "2", "--warmup-epochs", "1")
    train_trex.main(_args(tmp_path, *extra, "--max-steps-per-epoch", "1"))
    assert "never reaches its peak" not in capsys.readouterr().out
    before = (tmp_path / "checkpoint.pth").read_bytes()
    # Half the batch: other steps per epoch and rate, so the saved step count means nothing.
    # (--epochs 3: the run of 2 epochs is complete, re-running it would have nothing to do.)
    other = ("--epochs", "3", "--batch-size", "2", "--max-steps-per-epoch", "3")
    with pytest.raises(train_trex.UsageError, match=r"cannot resume from .*another schedule"):
        train_trex.main(_args(tmp_path, *extra, *other))
    assert (tmp_path / "checkpoint.pth").read_bytes() == before


def test_warmup_longer_than_the_run_is_reported(tmp_path, capsys):
    train_trex.main(_args(tmp_path, "--warmup-epochs", "10"))
    assert "--warmup-epochs 10 covers the whole run of 1 epochs" in capsys.readouterr().out


def test_resume_continues_exactly(tmp_path, monkeypatch):
    extra = ("--epochs", "2", "--warmup-epochs", "1")
    train_trex.main(_args(tmp_path / "straight", *extra))
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pth")

    original = train_trex.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job dies during the second epoch
        return original(*args, **kwargs)

    monkeypatch.setattr(train_trex, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_trex.main(_args(tmp_path / "resumed", *extra))
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pth")["epoch"] == 1
    monkeypatch.setattr(train_trex, "train_one_epoch", original)
    train_trex.main(_args(tmp_path / "resumed", *extra))  # resumes from checkpoint.pth
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pth")

    assert resumed["epoch"] == straight["epoch"] == 2 and resumed["step"] == 4
    _assert_same_state(resumed["model"], straight["model"])
    for a, b in zip(
        straight["optimizer"]["state"].values(),
        resumed["optimizer"]["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert straight["scheduler"] == resumed["scheduler"]
    assert [m["epoch"] for m in _metrics(tmp_path / "resumed")] == [1, 2]
    assert _metrics(tmp_path / "resumed")[1]["train_loss"] == pytest.approx(
        _metrics(tmp_path / "straight")[1]["train_loss"]
    )


def test_crash_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train_trex.main(_args(tmp_path))

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="no space left"):
        train_trex.main(_args(tmp_path, "--epochs", "2"))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 1


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    train_trex.main(_args(tmp_path))
    good = load_checkpoint(tmp_path / "checkpoint.pth")

    def nan_loss(self, logits, labels, label_smoothing=0.0):
        return (logits * float("nan")).mean()

    monkeypatch.setattr(TReX, "loss", nan_loss)
    with pytest.raises(train_trex.NonFiniteLossError, match=r"loss is nan at epoch 2, step 1") as e:
        train_trex.main(_args(tmp_path, "--epochs", "2"))
    assert "Last good checkpoint" in str(e.value) and "after epoch 1" in str(e.value)
    kept = load_checkpoint(tmp_path / "checkpoint.pth")
    assert kept["epoch"] == 1
    _assert_same_state(kept["model"], good["model"])


def test_backbone_export_loads_into_stock_torchvision(tmp_path):
    train_trex.main(_args(tmp_path))
    state = torch.load(tmp_path / "backbone.pth", weights_only=True)
    stock = torchvision.models.resnet18()
    result = stock.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pth")["model"]
    assert torch.equal(stock.conv1.weight, checkpoint["student.backbone.model.conv1.weight"])
    run = read_training_checkpoint(tmp_path / "checkpoint.pth")  # the schema reads the run back
    assert (run.arch, run.epoch, run.epochs, run.num_classes) == ("resnet18", 1, 1, 10)
    assert run.global_crop_size == 24 and run.missing_resume_keys == ()
    assert run.task_top1 == pytest.approx(run.metrics["val_top1"] / 100)
    _assert_same_state(run.backbone_state, state)
    written = set(load_checkpoint(tmp_path / "checkpoint.pth"))
    assert written == {getattr(schema, name) for name in dir(schema) if name.startswith("KEY_")}
    adapter, saved_args = load_checkpoint_backbone(tmp_path / "checkpoint.pth")
    assert saved_args["arch"] == "resnet18"
    assert torch.equal(adapter.model.conv1.weight, stock.conv1.weight)
    example = _load("load_backbone", ROOT / "examples" / "load_backbone.py")
    loaded = example.load_backbone(str(tmp_path / "backbone.pth"), "resnet18", 7, False)
    assert loaded.fc.out_features == 7
    assert torch.equal(loaded.layer4[1].bn2.running_var, stock.layer4[1].bn2.running_var)


@pytest.mark.parametrize("arch", ["resnet18", "convnext_tiny"])
def test_load_backbone_rebuilds_the_small_input_stem(tmp_path, arch):
    adapter = BackboneAdapter(arch, small_input_stem=True)
    torch.save(adapter.export_state_dict(), tmp_path / "backbone.pth")
    example = _load("load_backbone", ROOT / "examples" / "load_backbone.py")
    loaded = example.load_backbone(str(tmp_path / "backbone.pth"), arch, 3, True).eval()
    adapter.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # same weights, same stem: the pooled features agree
        head = "fc" if arch == "resnet18" else "classifier"
        if head == "fc":
            loaded.fc = torch.nn.Identity()
        else:
            loaded.classifier[2] = torch.nn.Identity()
        torch.testing.assert_close(loaded(x), adapter(x))
    with pytest.raises(SystemExit, match="ResNet and ConvNeXt"):
        example.load_backbone(str(tmp_path / "backbone.pth"), "vgg11", 3, True)


def _folder(root: Path, corrupt: bool, ext: str = "png") -> Path:
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                size = (30, 30) if ext == "png" else (30 + 4 * i, 26 + 3 * c)
                Image.new("RGB", size, (100 * c, 20 * i, 50)).save(folder / f"{i}.{ext}")
    bad = root / "train" / "class1" / "corrupt.jpg"
    if corrupt:
        bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return bad


ONE_BATCH = ("--batch-size", "7", "--global-crop-size", "24", "--local-crop-size", "12")


def test_corrupt_image_stops_with_the_file_name_or_is_skipped(tmp_path):
    bad = _folder(tmp_path / "data", corrupt=True)
    data = ["--data-dir", str(tmp_path / "data")]
    with pytest.raises(UnreadableImageError, match=r"cannot read image file '.*corrupt.jpg'"):
        train_trex.main(_args(tmp_path / "a", *ONE_BATCH, data=data))
    metrics = train_trex.main(_args(tmp_path / "b", *ONE_BATCH, "--skip-bad-images", data=data))
    assert metrics["train_skipped_images"] == 1.0 and metrics["val_skipped_images"] == 0.0
    assert bad.is_file()


def test_skipped_validation_images_are_counted_and_reported(tmp_path, capsys):
    _folder(tmp_path / "data", corrupt=True)
    for name in ("broken.jpg", "empty.png"):  # unreadable validation files are dropped too
        (tmp_path / "data" / "val" / "class0" / name).write_bytes(b"\xff\xd8 not an image")
    data = ["--data-dir", str(tmp_path / "data")]
    metrics = train_trex.main(_args(tmp_path / "b", *ONE_BATCH, "--skip-bad-images", data=data))
    assert (metrics["train_skipped_images"], metrics["val_skipped_images"]) == (1.0, 2.0)
    record = _metrics(tmp_path / "b")[-1]
    assert (record["train_skipped_images"], record["val_skipped_images"]) == (1.0, 2.0)
    assert "skipped unreadable images: 1 train, 2 val" in capsys.readouterr().out


def test_missing_tensorboard_is_reported_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    train_trex.main(_args(tmp_path / "a"))
    out = capsys.readouterr().out
    assert out.count("TensorBoard logging is off: the tensorboard package is not installed") == 1
    assert "protohead[tensorboard]" in out
    train_trex.main(_args(tmp_path / "b", "--no-tensorboard"))
    assert "TensorBoard" not in capsys.readouterr().out


def test_help_tells_that_tensorboard_is_optional():
    text = " ".join(train_trex.get_args_parser().format_help().split())
    assert "backbone.pth (and TensorBoard logs) go here" in text
    assert "pip install 'protohead[tensorboard]'" in text


def test_batched_decode_trains_and_follows_the_skip_policy(tmp_path):
    bad = _folder(tmp_path / "data", corrupt=True, ext="jpg")
    data = ["--data-dir", str(tmp_path / "data")]
    one_batch = ("--batch-size", "7", "--global-crop-size", "24", "--local-crop-size", "12")
    batched = (*one_batch, "--decode", "batched", "--decode-max-side", "28")
    with pytest.raises(UnreadableImageError, match=r"cannot read image file '.*corrupt.jpg'"):
        train_trex.main(_args(tmp_path / "a", *batched, data=data))
    metrics = train_trex.main(_args(tmp_path / "b", *batched, "--skip-bad-images", data=data))
    assert metrics["train_skipped_images"] == 1.0 and metrics["step"] == 1
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert bad.is_file()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (("--decode", "batched"), "--decode batched decodes image files: give --data-dir"),
        (("--decode-max-side", "-1"), "--decode-max-side must be >= 0, got -1"),
    ],
)
def test_batched_decode_usage_errors(tmp_path, extra, match):
    with pytest.raises(train_trex.UsageError, match=match):
        train_trex.main(_args(tmp_path, *extra))


def test_missing_data_dir_is_a_clear_error(tmp_path):
    args = _args(tmp_path, data=["--data-dir", str(tmp_path / "imagenet")])
    with pytest.raises(train_trex.UsageError, match=r"--data-dir '.*imagenet' does not exist"):
        train_trex.main(args)


@pytest.mark.distributed
def test_torchrun_two_processes_keep_identical_memory_banks(tmp_path):
    wrapper = tmp_path / "run.py"
    wrapper.write_text(
        textwrap.dedent(
            f"""
            import sys, torch
            from protohead.distributed import get_rank
            from protohead.train import trainer as mod
            original = mod.checkpoint_state

            def spy(model, *args, **kwargs):
                state = {{k: v.clone() for k, v in model.state_dict().items()
                          if torch.is_tensor(v)}}
                torch.save(state, {str(tmp_path)!r} + f"/rank{{get_rank()}}.pt")
                return original(model, *args, **kwargs)

            mod.checkpoint_state = spy
            mod.main(mod.get_args_parser().parse_args(sys.argv[1:]))
            """
        )
    )
    argv = [*FAKE, *TINY, "--fake-size", "32", "8", "--max-steps-per-epoch", "3"]
    argv += ["--memory-size", "64", "--threads", "1"]
    argv += ["--output-dir", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*cmd, str(wrapper), *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    memory_keys = [k for k in rank0 if ".memory." in k]
    assert memory_keys and int(rank0["classifier.memory.ptr"]) == 3 * 2 * 4  # steps x ranks x b
    for key in rank0:
        # CPU runs have no SyncBatchNorm, so only the teacher's BN statistics (never used for
        # evaluation) differ; the student's were re-estimated and averaged over ranks.
        if not (key.startswith("teacher.") and "running_" in key):
            assert torch.equal(rank0[key], rank1[key]), key
    ckpt = load_checkpoint(tmp_path / "out" / "checkpoint.pth")
    assert len(ckpt["rng"]) == 2


def test_init_from_starts_student_and_teacher_from_the_backbone_file(tmp_path, monkeypatch, capsys):
    train_trex.main(_args(tmp_path / "source"))
    source = tmp_path / "source" / "backbone.pth"
    weights = torch.load(source, weights_only=True)
    first: dict[str, dict] = {}
    original = train_trex.train_one_epoch

    def spy(model, *args, **kwargs):
        if not first:  # the weights the first step starts from
            first["student"] = {k: v.clone() for k, v in model.backbone_state_dict().items()}
            teacher = model.teacher.module.backbone.model.state_dict()
            first["teacher"] = {k: v.clone() for k, v in teacher.items()}
        return original(model, *args, **kwargs)

    monkeypatch.setattr(train_trex, "train_one_epoch", spy)
    run = ("--epochs", "2", "--max-steps-per-epoch", "1", "--init-from", str(source))
    train_trex.main(_args(tmp_path / "init", *run, "--seed", "1"))
    _assert_same_state(first["student"], weights)
    _assert_same_state(first["teacher"], weights)
    assert f"backbone initialised from {source}" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "init" / "checkpoint.pth")["args"]["init_from"] == str(source)

    # A resumed run continues its own weights: --init-from is ignored then.
    monkeypatch.setattr(
        train_trex, "init_backbone", lambda *a: pytest.fail("--init-from used on resume")
    )
    train_trex.main(_args(tmp_path / "init", *run, "--seed", "1", "--epochs", "3"))
    assert f"--init-from {source} is ignored: resuming from" in capsys.readouterr().out


def test_optimizer_implementations_give_the_same_training(tmp_path):
    runs = {}
    for impl in ("for-loop", "foreach"):
        train_trex.main(_args(tmp_path / impl, "--optimizer-impl", impl))
        runs[impl] = load_checkpoint(tmp_path / impl / "checkpoint.pth")
    groups = [runs[impl]["optimizer"]["param_groups"][0] for impl in ("for-loop", "foreach")]
    assert [(g["foreach"], g["fused"]) for g in groups] == [(False, False), (True, False)]
    loop, multi = runs["for-loop"]["model"], runs["foreach"]["model"]
    assert loop.keys() == multi.keys()
    for key, value in loop.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(multi[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_auto_optimizer_is_fused_on_cuda_and_foreach_elsewhere():
    assert train_trex.sgd_implementation("auto", torch.device("cuda")) == {
        "foreach": False,
        "fused": True,
    }
    assert train_trex.sgd_implementation("for-loop", torch.device("cuda")) == {
        "foreach": False,
        "fused": False,
    }


def test_start_removes_temp_files_of_a_save_killed_mid_way(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # What atomic_write leaves when its process is killed while writing: no process holds the
    # file's lock any more.
    orphan = out / ".checkpoint.pth.atomic-999999-k2x8q0ab.tmp"
    orphan.write_bytes(b"half a checkpoint")
    unrelated = out / "notes.tmp"
    unrelated.write_text("not ours")
    train_trex.main(_args(out))
    assert not orphan.exists() and unrelated.exists()
    assert (out / "checkpoint.pth").is_file()
    assert not list(out.glob(".*.tmp"))
    assert "removed 1 stale temporary file(s)" in capsys.readouterr().out


def test_fused_memory_trains_like_the_eager_memory(tmp_path):
    # --fused-memory on compiles the memory step (or falls back to the same functions run
    # eagerly where torch.compile has no backend): the run's weights and memory agree.
    runs = {}
    for choice in ("off", "on"):
        train_trex.main(_args(tmp_path / choice, "--fused-memory", choice))
        runs[choice] = load_checkpoint(tmp_path / choice / "checkpoint.pth")["model"]
    assert runs["off"].keys() == runs["on"].keys()
    for key, value in runs["off"].items():
        if key.startswith("classifier.memory.") and not value.is_floating_point():
            assert torch.equal(runs["on"][key], value), key
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(runs["on"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_fused_memory_auto_is_on_for_cuda_and_with_compile():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train_trex.fused_memory("auto", False, cuda) is True
    assert train_trex.fused_memory("auto", False, cpu) is False
    assert train_trex.fused_memory("auto", True, cpu) is True
    assert train_trex.fused_memory("off", True, cuda) is False
