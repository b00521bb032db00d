from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from protohead import (
    PRESETS,
    BackboneAdapter,
    PrototypeMemoryBank,
    TReX,
    get_preset,
    multicrop_cross_entropy,
)
from protohead.distributed import all_gather_scalar
from protohead.encoder import repeat_per_crop


def tiny_trex(**kwargs) -> TReX:
    torch.manual_seed(0)
    defaults = dict(projector_hidden_dim=32, projector_out_dim=16, memory_size=24)
    defaults.update(kwargs)
    return TReX("resnet18", num_classes=4, **defaults)


def make_crops(batch: int = 3, num_local: int = 2, seed: int = 0, num_global: int = 1):
    gen = torch.Generator().manual_seed(seed)
    crops = [torch.randn(batch, 3, 32, 32, generator=gen) for _ in range(num_global)]
    crops += [torch.randn(batch, 3, 16, 16, generator=gen) for _ in range(num_local)]
    return crops, torch.randint(0, 4, (batch,), generator=gen)


def test_forward_shapes_and_crop_major_order():
    model = tiny_trex().eval()
    crops, labels = make_crops()
    logits = model(crops, labels)
    assert logits.shape == (9, 4)
    per_crop = torch.cat([model(c) for c in crops])
    torch.testing.assert_close(logits, per_crop, atol=1e-5, rtol=1e-5)


def test_training_step_feeds_memory_with_teacher_global_features_only():
    model = tiny_trex(memory_init="empty").train()
    crops, labels = make_crops(batch=3, num_local=2)
    model(crops, labels)
    assert int(model.memory.ptr) == 3  # global crop only
    feats, stored = model.memory.entries()
    assert torch.equal(stored, labels)
    assert model.teacher is not None and model.teacher.num_updates == 1
    # The stored features are the teacher's raw projector outputs (not normalised).
    teacher_copy = TReX(
        "resnet18", num_classes=4, projector_hidden_dim=32, projector_out_dim=16, memory_size=24
    )
    teacher_copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        teacher_copy.train()
        # BN in train mode uses batch statistics, so the same batch reproduces the features.
        expected = teacher_copy.teacher(crops[:1])
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats.norm(dim=1), torch.ones(3))


def test_prototypes_are_taken_before_enqueue():
    model = tiny_trex(memory_init="random").train()
    crops, labels = make_crops()
    before = model.memory.prototypes().clone()
    z = None

    def grab(_m, _i, out):
        nonlocal z
        z = out

    model.student.register_forward_hook(grab)
    logits = model(crops, labels)
    expected = model.classifier(z, before)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(model.memory.prototypes(), before)


def test_eval_and_label_free_forward_do_not_touch_memory():
    model = tiny_trex()
    state = {k: v.clone() for k, v in model.memory.state_dict().items()}
    crops, labels = make_crops()
    model.eval()
    model(crops, labels)
    model.train()
    model(crops)
    for k, v in model.memory.state_dict().items():
        assert torch.equal(v, state[k])


def test_gradients_reach_student_but_never_memory_or_teacher():
    model = tiny_trex().train()
    crops, labels = make_crops()
    loss = model.loss(model(crops, labels), labels)
    loss.backward()
    backbone_grads = [p.grad for p in model.backbone.parameters()]
    projector_grads = [p.grad for p in model.projector.parameters()]
    assert all(g is not None for g in backbone_grads + projector_grads)
    assert sum(g.abs().sum() for g in backbone_grads) > 0
    assert sum(g.abs().sum() for g in projector_grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert not any(b.requires_grad for b in model.memory.buffers())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.student.parameters()}


def test_plain_and_baseline_variants():
    plain = tiny_trex(memory_size=0)
    assert plain.memory is None and plain.teacher is None
    assert plain.classifier.weight is not None
    base = TReX.from_preset("baseline", "resnet18", num_classes=4)
    assert isinstance(base.projector, nn.Identity)
    assert isinstance(base.classifier.linear, nn.Linear)
    assert base.classifier.linear.in_features == 512
    crops, labels = make_crops(num_local=0)
    assert base(crops, labels).shape == (3, 4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_steps(name):
    preset = get_preset(name)
    model = TReX.from_preset(
        name,
        "resnet18",
        num_classes=4,
        projector_hidden_dim=16,
        memory_size=16 if preset.memory_size else 0,
    )
    hidden = [m for m in model.projector.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(hidden) == (preset.projector_hidden_layers or 0)
    crops, labels = make_crops(num_local=min(preset.num_local_crops, 2))
    loss = model.loss(model.train()(crops, labels), labels)
    loss.backward()
    assert torch.isfinite(loss)


def test_paper_preset_values():
    trex, star = get_preset("trex"), get_preset("trex-star")
    assert (trex.projector_hidden_layers, star.projector_hidden_layers) == (3, 1)
    assert trex.global_crop_scale == (0.25, 1.0) and trex.local_crop_scale == (0.05, 0.25)
    assert star.global_crop_scale == (0.40, 1.0) and star.local_crop_scale == (0.05, 0.40)
    assert (trex.memory_size, trex.ema_momentum, trex.temperature) == (8192, 0.999, 0.1)
    assert (trex.num_global_crops, trex.num_local_crops) == (1, 8)
    assert (trex.global_crop_size, trex.local_crop_size) == (224, 96)
    model = TReX.from_preset("trex", "resnet50", num_classes=1000)
    assert model.projector.layers[0].out_features == 2048
    assert model.memory.size == 8192 and model.classifier.temperature == 0.1


def test_state_dict_round_trip_continues_identically():
    a = tiny_trex()
    crops, labels = make_crops()
    a.train()(crops, labels)
    b = tiny_trex(memory_init="empty")
    b.load_state_dict(a.state_dict())
    assert b.teacher.num_updates == 1
    crops2, labels2 = make_crops(seed=1)
    torch.testing.assert_close(a(crops2, labels2), b(crops2, labels2))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


def test_backbone_export_loads_into_stock_torchvision_model():
    model = tiny_trex()
    stock = torchvision.models.resnet18()
    result = stock.load_state_dict(model.backbone_state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    assert result.unexpected_keys == []
    stock.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(stock.eval()(x), model.eval().extract_features(x))


def test_caller_backbone_is_not_mutated():
    resnet = torchvision.models.resnet18(num_classes=7)
    model = TReX(resnet, num_classes=4, projector_hidden_dim=16, memory_size=8)
    assert isinstance(resnet.fc, nn.Linear) and resnet.fc.out_features == 7
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model.feature_dim == 512


def test_custom_feature_extractor_needs_feature_dim():
    extractor = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="feature_dim must be given"):
        TReX(extractor, num_classes=3)
    model = TReX(extractor, num_classes=3, feature_dim=8, projector_hidden_dim=8, memory_size=4)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="feature_dim must match the backbone's 512, got 8"):
        TReX(BackboneAdapter("resnet18"), num_classes=3, feature_dim=8)


def test_autocast_keeps_memory_float32():
    model = tiny_trex().train()
    crops, labels = make_crops()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(crops, labels)
    assert logits.dtype == torch.bfloat16
    assert model.memory.features.dtype == torch.float32
    assert model.memory._class_sums.dtype == torch.float64


@pytest.mark.parametrize(
    ("labels", "exc", "match"),
    [
        (
            torch.zeros(2, dtype=torch.long),
            ValueError,
            r"labels must have shape \(3,\), got \(2,\)",
        ),
        ([0, 1, 2], TypeError, "labels must be a Tensor"),
        (torch.tensor([0, 1, 9]), ValueError, r"labels must lie in \[0, 4\)"),
    ],
)
def test_bad_labels_raise(labels, exc, match):
    model = tiny_trex().train()
    crops, _ = make_crops()
    with pytest.raises(exc, match=match):
        model(crops, labels)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"memory_size": -1}, ValueError, "memory_size must be an int >= 0, got -1"),
        ({"num_global_crops": 0}, ValueError, "num_global_crops must be an int >= 1, got 0"),
        ({"temperature": 0.0}, ValueError, "temperature must be a real number > 0"),
        ({"projector_hidden_layers": -2}, ValueError, "num_hidden_layers must be an int >= 0"),
        ({"ema_momentum": 2.0}, ValueError, r"momentum must be a probability in \[0, 1\]"),
    ],
)
def test_constructor_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tiny_trex(**kwargs)


def test_multicrop_cross_entropy_repeats_labels_crop_major():
    logits = torch.randn(6, 5)
    labels = torch.tensor([1, 4])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 4, 1, 4, 1, 4]))
    torch.testing.assert_close(multicrop_cross_entropy(logits, labels), expected)
    with pytest.raises(ValueError, match="b dividing logits.shape"):
        multicrop_cross_entropy(torch.randn(5, 3), labels)


@pytest.mark.parametrize("smoothing", [0.1, 0.4])
def test_multicrop_cross_entropy_passes_label_smoothing(smoothing):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3 * 4, 6, generator=gen) * 3  # 3 crops of 4 images, crop-major
    labels = torch.tensor([5, 0, 2, 2])
    targets = labels.repeat(3)
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=smoothing)
    got = multicrop_cross_entropy(logits, labels, label_smoothing=smoothing)
    torch.testing.assert_close(got, expected)
    plain = torch.nn.functional.cross_entropy(logits, targets)
    assert (got - plain).abs() > 1e-3  # the smoothing is not dropped
    # Smoothing eps mixes in eps * the mean over classes of -log_softmax.
    uniform = -torch.log_softmax(logits, 1).mean()
    torch.testing.assert_close(got, (1 - smoothing) * plain + smoothing * uniform)


def test_end_to_end_training_reduces_loss():
    """A few t-ReX steps on a tiny learnable synthetic task visibly reduce the loss."""
    torch.manual_seed(0)
    num_classes, batch = 4, 16
    # Class = colour channel that is bright + a per-class pattern; learnable in a few steps.
    base = torch.randn(num_classes, 3, 16, 16)

    def sample(gen):
        labels = torch.randint(0, num_classes, (batch,), generator=gen)
        images = base[labels] + 0.3 * torch.randn(batch, 3, 16, 16, generator=gen)
        local = images[:, :, 4:12, 4:12]
        return [images, local, local.flip(-1)], labels

    backbone = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    model = TReX(
        backbone,
        num_classes,
        feature_dim=32,
        projector_hidden_dim=64,
        projector_out_dim=32,
        memory_size=64,
        ema_momentum=0.9,
        projector_hidden_layers=1,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    model.train()
    losses = []
    for _ in range(30):
        crops, labels = sample(gen)
        loss = model.loss(model(crops, labels), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses
    assert isinstance(model.memory, PrototypeMemoryBank)


def test_training_step_has_no_host_sync_in_skip_mode(monkeypatch):
    """The per-step path never reads a tensor value on the host (skip mode, as on GPUs)."""
    model = tiny_trex(on_invalid="skip").train()
    crops, labels = make_crops()

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the training step")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    logits = model(crops, labels)
    loss = model.loss(logits, labels)
    loss.backward()
    monkeypatch.undo()
    assert int(model.memory.ptr) == 3


def _full_state(model: TReX) -> dict:
    return {
        k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize(
    ("labels", "num_global_crops", "exc", "match"),
    [
        (torch.tensor([0, 1, 9]), 1, ValueError, r"labels must lie in \[0, 4\), got values \[9\]"),
        (torch.tensor([0.0, 1.0, 2.0]), 1, TypeError, "labels must be an integer tensor"),
        (torch.tensor([0, 1, 2]), 2, ValueError, "at least num_global_crops=2 tensors, got 1"),
    ],
)
def test_rejected_step_leaves_every_state_bit_identical(labels, num_global_crops, exc, match):
    """Student and teacher BN statistics, EMA weights, num_updates and memory stay as they were."""
    model = tiny_trex(num_global_crops=num_global_crops).train()
    crops, good = make_crops(num_local=1, num_global=num_global_crops)
    model(crops, good)  # a real step first, so the states are not the initial ones
    before = _full_state(model)
    assert before["teacher._extra_state"] == {"num_updates": 1}
    with pytest.raises(exc, match=match):
        model(crops[:1], labels)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[key]), key
        else:
            assert value == before[key], key


def test_skip_mode_steps_the_teacher_and_skips_bad_labels_in_the_memory():
    model = tiny_trex(on_invalid="skip", memory_init="empty").train()
    crops, _ = make_crops()
    model(crops, torch.tensor([0, 1, 9]))
    assert model.teacher is not None and model.teacher.num_updates == 1
    assert int(model.memory.num_skipped_updates) == 1
    assert int(model.memory.num_filled) == 0


def test_torchvision_classifier_is_wrapped_even_with_feature_dim():
    resnet = torchvision.models.resnet18(num_classes=7)
    model = TReX(resnet, num_classes=4, feature_dim=512, projector_hidden_dim=16, memory_size=8)
    assert isinstance(model.backbone, BackboneAdapter)
    assert model.extract_features(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    crops, labels = make_crops()
    assert model.train()(crops, labels).shape == (9, 4)
    for wrong in (1000, 7):  # the stock logits' width, the caller model's num_classes
        with pytest.raises(
            ValueError, match=rf"feature_dim must match the ResNet backbone's .* 512 .*got {wrong}"
        ):
            TReX(torchvision.models.resnet18(), num_classes=4, feature_dim=wrong)


def test_torchvision_model_without_classifier_is_used_as_given():
    resnet = torchvision.models.resnet18()
    resnet.fc = nn.Identity()
    model = TReX(resnet, num_classes=4, feature_dim=512, projector_hidden_dim=16, memory_size=8)
    assert model.backbone is resnet
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


# --- one check per step, before any state changes -------------------------------------------


def _assert_state_unchanged(model: TReX, before: dict) -> None:
    """Every entry of the state dict (BN statistics and num_batches_tracked of student and
    teacher, EMA weights, the teacher's num_updates, the memory ring and pointer) is
    bit-identical to ``before``."""
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[key]), key
        else:
            assert value == before[key], key


def _nan_global(crops, labels):
    crops[0][1, 0, 5, 5] = float("nan")
    return crops, labels


def _inf_local(crops, labels):
    crops[2][0, 1, 2, 3] = float("inf")
    return crops, labels


def _nan_and_inf(crops, labels):
    crops[0][0, 0, 0, 0] = float("nan")
    crops[2][2, 2, 2, 2] = float("-inf")
    return crops, labels


def _empty(crops, labels):
    return [c[:0] for c in crops], labels[:0]


def _empty_without_labels(crops, labels):
    return [c[:0] for c in crops], None


def _local_among_globals(crops, labels):
    return [crops[0], crops[2], crops[2]], labels  # crops[1] is a 16 px crop


def _bad_labels(crops, labels):
    return crops, torch.tensor([-1, 0, 9])


@pytest.mark.parametrize(
    ("corrupt", "num_global_crops", "exc", "match"),
    [
        (_nan_global, 1, ValueError, r"^crops\[0\] must be finite, got NaN or inf; no state was"),
        (_inf_local, 1, ValueError, r"^crops\[2\] must be finite, got NaN or inf; no state was"),
        (_nan_and_inf, 2, ValueError, r"^crops\[0\], crops\[2\] must be finite, got NaN or inf"),
        (_empty, 1, ValueError, r"^crops must hold at least one image in training mode, got batch"),
        (_empty_without_labels, 1, ValueError, "at least one image in training mode"),
        (
            _local_among_globals,
            2,
            ValueError,
            r"^crops\[1\] must have the size \(32, 32\) of crops\[0\] \(the first "
            r"num_global_crops=2 crops are global\), got \(16, 16\)$",
        ),
        (
            _bad_labels,
            1,
            ValueError,
            r"^labels must lie in \[0, 4\), got values \[-1, 9\]; no state was changed$",
        ),
    ],
)
def test_rejected_input_raises_before_any_state_changes(corrupt, num_global_crops, exc, match):
    model = tiny_trex(num_global_crops=num_global_crops).train()
    crops, labels = make_crops(num_local=3 - num_global_crops, num_global=num_global_crops)
    model(crops, labels)  # a real step first, so the states are not the initial ones
    before = _full_state(model)
    crops, labels = make_crops(num_local=3 - num_global_crops, num_global=num_global_crops, seed=1)
    with pytest.raises(exc, match=match):
        model(*corrupt(crops, labels))
    _assert_state_unchanged(model, before)
    assert model.teacher is not None and model.teacher.num_updates == 1


def test_plain_trex_rejects_an_empty_training_batch_before_batchnorm_counts_it():
    model = tiny_trex(memory_size=0).train()
    before = _full_state(model)
    crops, labels = make_crops()
    with pytest.raises(ValueError, match="at least one image in training mode, got batch size 0"):
        model([c[:0] for c in crops], labels[:0])
    _assert_state_unchanged(model, before)
    assert model.eval()([c[:0] for c in crops]).shape == (0, 4)  # harmless in eval mode


def test_skip_mode_stays_sync_free_and_leaves_non_finite_pixels_to_the_data_pipeline(monkeypatch):
    """The documented skip-mode behaviour: no check, no sync; the poison is visible after."""
    model = tiny_trex(on_invalid="skip", memory_init="empty").train()
    crops, labels = make_crops()
    crops[0][1, 0, 5, 5] = float("nan")

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the training step")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    logits = model(crops, labels)
    monkeypatch.undo()
    assert not torch.isfinite(logits).all()  # the loss will be NaN
    assert model.teacher is not None and model.teacher.num_updates == 1  # the EMA step was taken
    assert int(model.memory.num_skipped_updates) == 1  # NaN teacher features were not enqueued
    assert int(model.memory.num_filled) == 0
    assert model.backbone.model.bn1.running_mean.isnan().any()  # BN statistics are poisoned


def test_a_training_step_checks_its_crops_once_and_the_blocks_alone_still_check(monkeypatch):
    import protohead._trex_checks as trex_checks
    import protohead.encoder as encoder_module

    calls: list[int] = []
    original = encoder_module.group_by_resolution

    def counting(crops):
        calls.append(len(crops))
        return original(crops)

    monkeypatch.setattr(encoder_module, "group_by_resolution", counting)
    monkeypatch.setattr(trex_checks, "group_by_resolution", counting)
    model = tiny_trex().train()
    crops, labels = make_crops()
    model(crops, labels)
    assert calls == [3]  # once for the student, the teacher and the step's checks together
    calls.clear()
    model.student(crops)
    assert calls == [3]
    with pytest.raises(ValueError, match=r"crops\[1\] must have the batch size"):
        model.student([crops[0], crops[1][:2]])


def test_raise_mode_step_runs_no_collective_without_a_process_group(monkeypatch):
    import protohead.distributed as pd

    def forbidden(*args, **kwargs):
        raise AssertionError("collective without a process group")

    monkeypatch.setattr(pd, "_all_gather_single", forbidden)
    model = tiny_trex().train()
    crops, labels = make_crops()
    model(crops, labels)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got values \[7\]"):
        model(crops, torch.tensor([0, 7, 1]))


def test_labels_are_checked_for_integer_dtype_in_eval_mode_too():
    model = tiny_trex().eval()
    crops, _ = make_crops()
    with pytest.raises(TypeError, match="labels must be an integer tensor, got torch.float32"):
        model(crops, torch.zeros(3))


@pytest.mark.parametrize("bad", [-100, -1, 5])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_multicrop_cross_entropy_rejects_labels_outside_the_classes(bad, smoothing):
    # -100 is torch's default ignore_index: it must not be silently left out of the mean.
    logits, labels = torch.randn(4, 5), torch.tensor([1, bad])
    with pytest.raises(ValueError, match=rf"^labels must lie in \[0, 5\), got values \[{bad}\]$"):
        multicrop_cross_entropy(logits, labels, label_smoothing=smoothing)


@pytest.mark.parametrize("kind", ["adapter", "plain"])
def test_backbone_state_dict_is_a_detached_snapshot(kind):
    if kind == "adapter":
        model = tiny_trex()
        live = model.backbone.model.state_dict()  # type: ignore[union-attr]
    else:
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        model = TReX(backbone, 4, feature_dim=4, projector_hidden_dim=8, memory_size=8)
        live = backbone.state_dict()
    exported = model.backbone_state_dict()
    assert exported.keys() <= live.keys() and len(exported) > 0
    snapshot = {k: v.clone() for k, v in live.items()}
    for key, value in exported.items():
        assert not value.requires_grad
        assert value.data_ptr() != live[key].data_ptr(), key
        value.add_(1)  # editing the export leaves the model alone ...
    for key, value in live.items():
        assert torch.equal(value, snapshot[key]), key
    with torch.no_grad():  # ... and training the model leaves the export alone
        for p in model.backbone.parameters():
            p.add_(1)
    for key, value in exported.items():
        if value.is_floating_point():
            assert torch.equal(value, snapshot[key] + 1), key


def _ts_model() -> TReX:
    torch.manual_seed(0)
    return TReX("resnet18", 10, projector_hidden_dim=8, memory_size=16).train()


def _ts_crops(batch: int = 4) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, 32, 32)] + [torch.randn(batch, 3, 16, 16)] * 2


def _ts_non_finite() -> None:
    crops = _ts_crops()
    crops[2] = crops[2].clone().fill_(float("inf"))
    _ts_model()(crops, torch.tensor([0, 1, 2, 3]))


TROUBLESHOOTING_TRIGGERS = [
    ("non-finite-crop", _ts_non_finite),
    ("labels-step", lambda: _ts_model()(_ts_crops(), torch.tensor([0, 10, 2, 3]))),
    ("empty-batch", lambda: _ts_model()(_ts_crops(0), torch.zeros(0, dtype=torch.long))),
    (
        "global-size",
        lambda: TReX(
            "resnet18", 10, projector_hidden_dim=8, memory_size=16, num_global_crops=2
        ).train()(_ts_crops(), torch.tensor([0, 1, 2, 3])),
    ),
    (
        "loss-labels",
        lambda: multicrop_cross_entropy(torch.zeros(6, 10), torch.tensor([3, -100])),
    ),
    ("repeat-0d", lambda: repeat_per_crop(torch.tensor(3), 2)),
    ("repeat-crops", lambda: repeat_per_crop(torch.arange(4), 0)),
    ("gather-scalar", lambda: all_gather_scalar(torch.zeros(2))),
]


@pytest.mark.parametrize(
    ("case", "trigger"), TROUBLESHOOTING_TRIGGERS, ids=[c for c, _ in TROUBLESHOOTING_TRIGGERS]
)
def test_new_step_errors_are_quoted_in_the_troubleshooting_guide(case, trigger):
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    with pytest.raises(Exception) as info:
        trigger()
    quoted = f"{type(info.value).__name__}: {info.value}"
    assert f"```text\n{quoted}\n```" in page, f"docs/troubleshooting.md should quote:\n{quoted}"
