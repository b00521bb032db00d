"""The authors' full training checkpoints into protohead's TReX (pretrained.authors_checkpoint).

The synthetic checkpoints below are written from the authors' key names and saving layout
(DDP ``module.`` prefix; ``model.encoder``, ``model.head.layers.<i>.fc/bn``, bottleneck
``model.head.layers.<j>.weight``, ``model_ema``, ``memory``, ``clf.fc``; SGD state with the
weight matrices in group 0 and biases / 1-D parameters in group 1; ``fp16_scaler``; ``args``
as an ``argparse.Namespace`` holding a numpy learning-rate schedule), independently of the
loader's mapping, and every expected TReX name is spelled out here.
"""

from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from protohead.model import TReX
from protohead.pretrained.authors_checkpoint import (
    AuthorsCheckpoint,
    authors_to_trex_state_dict,
    authors_trex_kwargs,
    load_authors_checkpoint,
    read_authors_checkpoint,
)
from protohead.train.optim import param_groups

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
SCALER = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
          "growth_interval": 2000, "_growth_tracker": 7}  # fmt: skip


def _random_like(value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if value.is_floating_point():
        return torch.randn(value.shape, generator=generator)
    return torch.randint(0, 50, value.shape, generator=generator, dtype=value.dtype)


def _authors_model(
    *, hidden: int, l2: bool, memory: int, classes: int = 10, width: int = 16, out: int = 8
) -> dict[str, torch.Tensor]:
    """The authors' DDP model state_dict for a resnet18 t-ReX, in their registration order."""
    g = torch.Generator().manual_seed(hidden * 100 + memory)

    def branch(root: str) -> dict[str, torch.Tensor]:
        resnet = torchvision.models.resnet18().state_dict()
        state = {f"module.{root}.encoder.{k}": _random_like(v, g) for k, v in resnet.items()
                 if not k.startswith("fc.")}  # fmt: skip
        first, dim = (1 if l2 else 0), 512
        for n in range(hidden):
            block = f"module.{root}.head.layers.{first + n}"
            state[f"{block}.fc.weight"] = torch.randn(width, dim, generator=g)
            state[f"{block}.fc.bias"] = torch.randn(width, generator=g)
            state[f"{block}.bn.weight"] = torch.randn(width, generator=g)
            state[f"{block}.bn.bias"] = torch.randn(width, generator=g)
            state[f"{block}.bn.running_mean"] = torch.randn(width, generator=g)
            state[f"{block}.bn.running_var"] = torch.rand(width, generator=g) + 0.5
            state[f"{block}.bn.num_batches_tracked"] = torch.tensor(1234)
            dim = width
        state[f"module.{root}.head.layers.{first + hidden}.weight"] = torch.randn(
            out, dim, generator=g
        )
        return state

    state = branch("model")
    if memory:
        state["module.memory.features"] = torch.randn(memory, out, generator=g)
        state["module.memory.labels"] = torch.randint(0, classes, (memory,), generator=g)
        state["module.memory.ptr"] = torch.tensor([5])
        state.update(branch("model_ema"))
    else:
        state["module.clf.fc.weight"] = torch.randn(classes, out, generator=g)
    return state


def _authors_optimizer(model_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Their SGD state: trainable parameters in model order, weight matrices first."""
    trainable = ("module.model.", "module.clf.")
    names = [
        k[len("module.") :]
        for k in model_state
        if k.startswith(trainable) and not k.endswith(BUFFERS)
    ]
    decayed = [
        k for k in names if not (k.endswith(".bias") or model_state[f"module.{k}"].ndim == 1)
    ]
    rest = [k for k in names if k not in decayed]
    g = torch.Generator().manual_seed(3)
    state = {i: {"momentum_buffer": torch.randn(model_state[f"module.{k}"].shape, generator=g)}
             for i, k in enumerate(decayed + rest)}  # fmt: skip
    groups = [
        {"params": list(range(len(decayed))), "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        {"params": list(range(len(decayed), len(names))), "lr": 0.01, "momentum": 0.9,
         "weight_decay": 0.0},
    ]  # fmt: skip
    return {"state": state, "param_groups": groups, "_order": decayed + rest}


def _trex_name(key: str, hidden: int, l2: bool) -> str:
    """The TReX entry an authors' key (``module.`` removed) must land in."""
    first = 1 if l2 else 0
    for root, target in (("model.", "student."), ("model_ema.", "teacher.module.")):
        if key.startswith(root + "encoder."):
            return f"{target}backbone.model.{key[len(root + 'encoder.') :]}"
        if key.startswith(root + "head.layers."):
            index, *rest = key[len(root + "head.layers.") :].split(".")
            n = int(index) - first
            if rest[0] == "fc":
                return f"{target}head.layers.{3 * n}.{rest[1]}"
            if rest[0] == "bn":
                return f"{target}head.layers.{3 * n + 1}.{rest[1]}"
            return f"{target}head.layers.{3 * hidden}.weight"
    if key.startswith("memory."):
        return f"classifier.{key}"
    assert key == "clf.fc.weight"
    return "classifier.weight"


def _save(path: Path, model_state: dict[str, torch.Tensor], **extra: Any) -> Path:
    optimizer = _authors_optimizer(model_state)
    optimizer.pop("_order")
    args = argparse.Namespace(
        arch="resnet18", clf_tau=0.1, memory_size=8192, lr=0.1,
        lr_schedule=np.linspace(0.0, 0.1, 11), mc_global_scale=[0.25, 1.0],
    )  # fmt: skip
    torch.save({"model": model_state, "optimizer": optimizer, "epoch": 100, "args": args,
                "fp16_scaler": SCALER, **extra}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ocm_state() -> dict[str, torch.Tensor]:
    return _authors_model(hidden=1, l2=True, memory=32)


@pytest.fixture(scope="module")
def ocm_file(ocm_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("authors") / "trex_full.pth", ocm_state)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_ocm_checkpoint_round_trips_into_trex(
    ocm_state: dict[str, torch.Tensor], ocm_file: Path
) -> None:
    ckpt = read_authors_checkpoint(ocm_file)
    assert ckpt.epoch == 100 and ckpt.scaler == SCALER and ckpt.args["arch"] == "resnet18"
    assert ckpt.args["lr_schedule"].tolist() == pytest.approx(np.linspace(0.0, 0.1, 11).tolist())
    kwargs = authors_trex_kwargs(ckpt)
    assert kwargs == {
        "backbone": "resnet18", "num_classes": 1000, "projector_hidden_layers": 1,
        "projector_hidden_dim": 16, "projector_out_dim": 8, "projector_input_l2_norm": True,
        "temperature": 0.1, "memory_size": 32, "ema_momentum": 0.999,
    }  # fmt: skip
    model = TReX(**{**kwargs, "num_classes": 10})
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    returned = load_authors_checkpoint(model, ckpt, optimizer=optimizer, scaler=scaler)
    assert returned is ckpt

    loaded = model.state_dict()
    expected_names = {_trex_name(k[len("module.") :], 1, True) for k in ocm_state}
    assert expected_names == set(loaded) - {
        "teacher._extra_state",
        "classifier.memory.num_skipped_updates",
    }
    for key, value in ocm_state.items():
        name = _trex_name(key[len("module.") :], hidden=1, l2=True)
        assert torch.equal(loaded[name], value.reshape(loaded[name].shape)), name
    assert loaded["classifier.memory.ptr"].shape == () and int(loaded["classifier.memory.ptr"]) == 5
    assert int(loaded["classifier.memory.num_skipped_updates"]) == 0

    source = _authors_optimizer(ocm_state)
    params = dict(model.named_parameters())
    restored = 0
    for index, key in enumerate(source["_order"]):
        param = params[_trex_name(key, hidden=1, l2=True)]
        buffer = optimizer.state[param]["momentum_buffer"]
        assert torch.equal(buffer, source["state"][index]["momentum_buffer"]), key
        restored += 1
    assert restored == len(optimizer.state) == sum(len(g["params"]) for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]  # kept as built
    assert scaler.get_scale() == 1024.0 and scaler.state_dict()["_growth_tracker"] == 7

    # The restored model trains on: a step runs, the memory takes the teacher's features.
    model.train()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    labels = torch.tensor([1, 2])
    model.loss(model(crops, labels), labels).backward()
    optimizer.step()
    assert int(model.memory.ptr) == 7


def test_plain_checkpoint_without_input_norm_round_trips() -> None:
    state = _authors_model(hidden=3, l2=False, memory=0, classes=6)
    ckpt = read_authors_checkpoint({"model": state, "args": {"arch": "resnet18"}})  # user-loaded
    kwargs = authors_trex_kwargs(ckpt)
    assert (kwargs["projector_hidden_layers"], kwargs["projector_input_l2_norm"]) == (3, False)
    assert (kwargs["memory_size"], kwargs["num_classes"], kwargs["temperature"]) == (0, 6, 0.1)
    model = TReX(**kwargs)
    assert model.teacher is None
    load_authors_checkpoint(model, ckpt)
    loaded = model.state_dict()
    assert len(loaded) == len(state)
    for key, value in state.items():
        assert torch.equal(loaded[_trex_name(key[len("module.") :], 3, False)], value), key


def test_every_unmapped_key_is_listed_and_nothing_changes(
    ocm_state: dict[str, torch.Tensor],
) -> None:
    # A learned-weights model has no memory and no teacher for the OCM checkpoint's entries.
    model = TReX("resnet18", 10, projector_hidden_layers=1, projector_hidden_dim=16,
                 projector_out_dim=8, memory_size=0)  # fmt: skip
    before = _snapshot(model)
    state = {**ocm_state, "module.model.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="checkpoint must fit the model") as info:
        load_authors_checkpoint(model, {"model": state})
    message = str(info.value)
    extra = ("module.memory.", "module.model_ema.", "module.model.extra")
    unmapped = [k[len("module.") :] for k in state if k.startswith(extra)]
    assert len(unmapped) > 60
    listed = re.search(
        r"(\d+) checkpoint key\(s\) without a counterpart in the model: ([^;]*)", message
    )
    assert listed is not None and int(listed[1]) == len(unmapped)
    assert listed[2].split(", ") == unmapped
    assert message.endswith("; 1 model entr(ies) not in the checkpoint: classifier.weight")
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(model).items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"projector_hidden_layers": 2},
            r"14 model entr\(ies\) not in the checkpoint: student.head.layers.3.weight, "
            r"student.head.layers.3.bias, .*teacher.module.head.layers.3.weight",
        ),
        (
            {"projector_hidden_layers": 0},
            r"checkpoint key\(s\) without a counterpart in the model: "
            r"model.head.layers.1.fc.weight, .*model.head.layers.2.weight -> "
            r"student.head.layers.0.weight: shape \(8, 16\), model \(8, 512\)",
        ),
        (
            {"projector_hidden_dim": 32},
            r"model.head.layers.1.fc.weight -> student.head.layers.0.weight: shape \(16, 512\), "
            r"model \(32, 512\)",
        ),
        (
            {"projector_input_l2_norm": False},
            "projector input L2 normalisation: the model has input_l2_norm=False",
        ),
        ({"memory_size": 64}, r"memory.features -> classifier.memory.features: shape \(32, 8\)"),
    ],
    ids=["deeper-model", "shallower-model", "width", "input-norm", "memory-size"],
)
def test_structure_mismatches_are_named(
    ocm_state: dict[str, torch.Tensor], kwargs: dict[str, Any], message: str
) -> None:
    base = {"backbone": "resnet18", "num_classes": 10, "projector_hidden_layers": 1,
            "projector_hidden_dim": 16, "projector_out_dim": 8, "memory_size": 32}  # fmt: skip
    model = TReX(**{**base, **kwargs})
    before = _snapshot(model)
    ckpt = read_authors_checkpoint({"model": ocm_state})
    with pytest.raises(ValueError, match=message):
        load_authors_checkpoint(model, ckpt)
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(model).items())


def test_invalid_memory_is_refused_before_any_change(ocm_state: dict[str, torch.Tensor]) -> None:
    state = {**ocm_state, "module.memory.labels": torch.full((32,), 10)}  # 10 classes: 0..9
    model = TReX("resnet18", 10, projector_hidden_layers=1, projector_hidden_dim=16,
                 projector_out_dim=8, memory_size=32)  # fmt: skip
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"classifier.memory.labels must be in \[-1, 10\)"):
        authors_to_trex_state_dict(read_authors_checkpoint({"model": state}).model, model)
    with pytest.raises(ValueError, match=r"classifier.memory.labels must be in \[-1, 10\)"):
        load_authors_checkpoint(model, {"model": state})
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(model).items())


def test_optimizer_and_scaler_requests_are_checked(ocm_state: dict[str, torch.Tensor]) -> None:
    model = TReX("resnet18", 10, projector_hidden_layers=1, projector_hidden_dim=16,
                 projector_out_dim=8, memory_size=32)  # fmt: skip
    before = _snapshot(model)
    adamw = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.SGD .* got AdamW"):
        load_authors_checkpoint(model, {"model": ocm_state}, optimizer=adamw)
    sgd = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="checkpoint must hold an optimizer state"):
        load_authors_checkpoint(model, {"model": ocm_state}, optimizer=sgd)
    with pytest.raises(ValueError, match="checkpoint must hold a gradient scaler state"):
        load_authors_checkpoint(model, {"model": ocm_state}, scaler=torch.amp.GradScaler("cpu"))
    adam_like = _authors_optimizer(ocm_state)
    adam_like.pop("_order")
    adam_like["state"][0] = {"exp_avg": torch.zeros(1), "step": torch.tensor(1.0)}
    with pytest.raises(
        ValueError, match=r"optimizer state cannot be mapped: .*\['exp_avg', 'step'\]"
    ):
        load_authors_checkpoint(model, {"model": ocm_state, "optimizer": adam_like}, optimizer=sgd)
    short = _authors_optimizer(ocm_state)
    short["param_groups"][1]["params"].pop()
    with pytest.raises(ValueError, match=r"groups of \d+ and \d+ parameters to be mapped"):
        load_authors_checkpoint(model, {"model": ocm_state, "optimizer": short}, optimizer=sgd)
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(model).items())
    assert not sgd.state


def test_files_needing_other_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"model": {}, "date": datetime.date(2023, 5, 1)}, path)
    with pytest.raises(
        ValueError, match=r"cannot be loaded safely \(it needs \['datetime.date'\]\)"
    ):
        read_authors_checkpoint(path)
    with pytest.raises(
        ValueError, match="must be a dict with a 'model' state_dict, got \\['epoch'\\]"
    ):
        read_authors_checkpoint({"epoch": 1})
    with pytest.raises(FileNotFoundError, match="source must be a registry name or a file"):
        read_authors_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="full checkpoint"):
        read_authors_checkpoint("trex_resnet50")  # released without a full checkpoint


def test_registry_name_reads_the_cached_full_checkpoint(
    ocm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "trex_2_checkpoint_full.pth").write_bytes(ocm_file.read_bytes())
    monkeypatch.setattr(torch.hub, "download_url_to_file", pytest.fail)
    with pytest.warns(UserWarning, match=re.escape(
        "no recorded SHA-256 for trex_resnet50_repro (full checkpoint); run `python -m "
        "protohead.pretrained --print-sha256 trex_resnet50_repro --full-checkpoint`"
    )):  # fmt: skip
        ckpt = read_authors_checkpoint("trex_resnet50_repro")
    assert isinstance(ckpt, AuthorsCheckpoint) and ckpt.epoch == 100
