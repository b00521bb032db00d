"""Tests for protohead.train.optim: parameter groups, lr rule, warm-up + cosine."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from protohead.train.optim import WarmupCosineLR, lr_at, param_groups, scaled_lr


def test_scaled_lr_is_linear_in_batch_size():
    assert scaled_lr(0.1, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 64) == pytest.approx(0.025)
    assert scaled_lr(0.2, 100, reference_batch_size=50) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_lr": -0.1, "global_batch_size": 8}, "base_lr must be a real number >= 0"),
        ({"base_lr": 0.1, "global_batch_size": 0}, "global_batch_size must be an int >= 1"),
        ({"base_lr": 0.1, "global_batch_size": 8, "reference_batch_size": 0}, "reference"),
    ],
)
def test_scaled_lr_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scaled_lr(**kwargs)


def test_param_groups_exempt_biases_and_norms_from_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model, 1e-4)
    decayed, plain = groups
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert all(p.ndim <= 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_param_groups_skip_frozen_parameters_and_empty_groups():
    model = nn.Linear(3, 2, bias=False)
    frozen = nn.Linear(3, 3)
    frozen.requires_grad_(False)
    both = nn.ModuleList([model, frozen])
    groups = param_groups(both, 0.5)
    assert len(groups) == 1
    assert groups[0]["params"] == [model.weight]


def test_param_groups_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        param_groups("model", 1e-4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_decay must be a real number >= 0, got -1"):
        param_groups(nn.Linear(2, 2), -1.0)


def test_lr_at_warms_up_from_zero_then_decays_to_the_floor():
    kw = {"base_lr": 0.4, "total_steps": 100, "warmup_steps": 10, "final_lr": 1e-6}
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.2)
    assert lr_at(10, **kw) == pytest.approx(0.4)
    assert lr_at(55, **kw) == pytest.approx((0.4 + 1e-6) / 2)
    assert lr_at(100, **kw) == pytest.approx(1e-6)
    assert lr_at(1000, **kw) == pytest.approx(1e-6)


def test_lr_at_without_warmup_starts_at_the_peak():
    assert lr_at(0, base_lr=1.0, total_steps=4, warmup_steps=0, final_lr=0.0) == 1.0


@given(
    total=st.integers(1, 500),
    warmup_frac=st.floats(0.0, 1.0),
    base=st.floats(1e-4, 10.0),
)
def test_lr_at_is_bounded_and_monotone_in_each_phase(total, warmup_frac, base):
    warmup = int(total * warmup_frac)
    lrs = [lr_at(s, base_lr=base, total_steps=total, warmup_steps=warmup) for s in range(total + 2)]
    assert all(0.0 <= lr <= base * (1 + 1e-12) for lr in lrs)
    pairs = list(itertools.pairwise(lrs))
    # Rising inside the warm-up; the step into the cosine may go either way (to the peak, or
    # straight to the floor when the warm-up fills the whole schedule); falling after it.
    assert all(a <= b + 1e-12 for a, b in pairs[: max(warmup - 1, 0)])
    assert all(a >= b - 1e-12 for a, b in pairs[warmup:])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": -1}, "step must be an int >= 0, got -1"),
        ({"total_steps": 0}, "total_steps must be an int >= 1"),
        ({"warmup_steps": 11}, "warmup_steps must be <= total_steps=10, got 11"),
        ({"final_lr": 2.0}, "final_lr must be <= base_lr=1.0, got 2.0"),
        ({"base_lr": math.nan}, "base_lr must be finite, got nan"),
    ],
)
def test_lr_at_rejects_bad_values(kwargs, match):
    args = {"step": 0, "base_lr": 1.0, "total_steps": 10, "warmup_steps": 2, "final_lr": 0.0}
    args.update(kwargs)
    step = args.pop("step")
    with pytest.raises(ValueError, match=match):
        lr_at(step, **args)


def test_scheduler_sets_every_group_and_resumes_exactly():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=99.0)
    sched = WarmupCosineLR(opt, base_lr=1.0, total_steps=8, warmup_steps=2, final_lr=0.0)
    straight = [sched.step() for _ in range(8)]
    assert straight[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert all(group["lr"] == straight[-1] for group in opt.param_groups)

    first = WarmupCosineLR(opt, base_lr=1.0, total_steps=8, warmup_steps=2, final_lr=0.0)
    head = [first.step() for _ in range(3)]
    second = WarmupCosineLR(opt, base_lr=1.0, total_steps=8, warmup_steps=2, final_lr=0.0)
    second.load_state_dict(first.state_dict())
    assert head + [second.step() for _ in range(5)] == straight


def test_scheduler_rejects_bad_arguments_and_state():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        WarmupCosineLR(object(), base_lr=1.0, total_steps=2, warmup_steps=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_steps must be <= total_steps=2, got 3"):
        WarmupCosineLR(opt, base_lr=1.0, total_steps=2, warmup_steps=3)
    sched = WarmupCosineLR(opt, base_lr=1.0, total_steps=2, warmup_steps=0)
    with pytest.raises(ValueError, match="state must hold an int 'num_steps' >= 0"):
        sched.load_state_dict({"num_steps": -2})
    assert sched.num_steps == 0


def test_scheduler_refuses_to_continue_another_schedule():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    saved = WarmupCosineLR(opt, base_lr=0.2, total_steps=24, warmup_steps=6)
    saved.step()
    # Same run on half the processes: twice the steps at half the rate.
    other = WarmupCosineLR(opt, base_lr=0.1, total_steps=48, warmup_steps=12)
    with pytest.raises(ValueError, match=r"another schedule \(base_lr 0.2 -> 0.1\)"):
        other.load_state_dict(saved.state_dict())
    assert other.num_steps == 0
    longer = WarmupCosineLR(opt, base_lr=0.2, total_steps=48, warmup_steps=6)  # more epochs
    longer.load_state_dict(saved.state_dict())
    assert longer.num_steps == 1
    other.load_state_dict({"num_steps": 3})  # states of older versions hold the count only
    assert other.num_steps == 3
