from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from protohead import EMATeacher, cosine_momentum_schedule


def make_student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def perturb(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_momentum_zero_copies_and_one_freezes(seed):
    student = make_student()
    copier = EMATeacher(student, momentum=0.0)
    frozen = EMATeacher(student, momentum=1.0)
    frozen_before = [p.clone() for p in frozen.module.parameters()]
    perturb(student, seed)
    copier.update(student)
    frozen.update(student)
    for t, s in zip(copier.module.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)
    for t, b in zip(frozen.module.parameters(), frozen_before, strict=True):
        assert torch.equal(t, b)


def test_update_matches_ema_formula():
    student = make_student()
    teacher = EMATeacher(student, momentum=0.9)
    start = [p.clone() for p in teacher.module.parameters()]
    perturb(student, 3)
    teacher.update(student)
    for t, t0, s in zip(teacher.module.parameters(), start, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)


def test_student_not_modified_and_teacher_frozen():
    student = make_student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher = EMATeacher(student)
    teacher.update(student)
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.module is not student


def test_buffers_are_own_by_default_and_copied_on_request():
    student = make_student()
    own = EMATeacher(student, momentum=0.5)
    copy = EMATeacher(student, momentum=0.5, copy_buffers=True)
    student.train()
    student(torch.randn(16, 4))  # moves the student's BN statistics
    own.update(student)
    copy.update(student)
    assert not torch.equal(own.module[1].running_mean, student[1].running_mean)
    assert torch.equal(copy.module[1].running_mean, student[1].running_mean)


def test_schedule_hook_and_resume_of_update_count():
    student = make_student()
    seen = []

    def schedule(step: int) -> float:
        seen.append(step)
        return 0.5

    teacher = EMATeacher(student, momentum_schedule=schedule)
    for _ in range(3):
        teacher.update(student)
    assert seen == [0, 1, 2]
    restored = EMATeacher(student, momentum_schedule=schedule)
    restored.load_state_dict(teacher.state_dict())
    assert restored.num_updates == 3
    restored.update(student)
    assert seen[-1] == 3


def test_cosine_schedule_endpoints_and_monotone():
    sched = cosine_momentum_schedule(0.9, 1.0, total_steps=10)
    values = [sched(i) for i in range(12)]
    assert values[0] == pytest.approx(0.9)
    assert values[10] == pytest.approx(1.0)
    assert values[11] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_update_uses_the_momentum_the_schedule_returns():
    student = make_student()
    # The constant momentum (0.999) must be ignored in favour of the schedule's value.
    teacher = EMATeacher(student, momentum_schedule=lambda step: 0.25 + 0.5 * step)
    perturb(student, 4)
    for m in (0.25, 0.75):  # step 0, then step 1
        assert teacher.current_momentum() == m
        start = [p.clone() for p in teacher.module.parameters()]
        teacher.update(student)
        for t, t0, s in zip(teacher.module.parameters(), start, student.parameters(), strict=True):
            torch.testing.assert_close(t, m * t0 + (1 - m) * s)
    assert teacher.num_updates == 2


def test_cosine_schedule_follows_the_closed_form_not_a_straight_line():
    base, final, total = 0.9, 1.0, 10
    sched = cosine_momentum_schedule(base, final, total_steps=total)
    for k in range(1, total):
        expected = final - (final - base) * (math.cos(math.pi * k / total) + 1) / 2
        assert sched(k) == pytest.approx(expected, abs=1e-12)
    # Slow start and slow end: below the straight line in the first half, above it after.
    line = [base + (final - base) * k / total for k in range(total + 1)]
    assert sched(2) < line[2] - 0.005 and sched(8) > line[8] + 0.005
    assert sched(5) == pytest.approx(line[5], abs=1e-12)  # the midpoint is shared
    assert sched(-3) == pytest.approx(base)  # clamped before the start


def test_state_dict_round_trip():
    student = make_student()
    teacher = EMATeacher(student, momentum=0.5)
    perturb(student, 1)
    teacher.update(student)
    other = EMATeacher(make_student(5), momentum=0.5)
    other.load_state_dict(teacher.state_dict())
    for a, b in zip(other.module.parameters(), teacher.module.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"momentum": 1.5}, ValueError, r"momentum must be a probability in \[0, 1\], got 1.5"),
        ({"momentum": -0.1}, ValueError, r"momentum must be a probability in \[0, 1\]"),
        ({"momentum": "0.9"}, TypeError, "momentum must be a real number, got str"),
        ({"momentum_schedule": lambda step: 2.0}, ValueError, r"momentum_schedule\(step\)"),
    ],
)
def test_validation(kwargs, exc, match):
    student = make_student()
    with pytest.raises(exc, match=match):
        EMATeacher(student, **kwargs).update(student)


def test_mismatched_student_raises_and_teacher_untouched():
    teacher = EMATeacher(make_student(), momentum=0.5)
    before = [p.clone() for p in teacher.module.parameters()]
    with pytest.raises(
        ValueError, match="student must have the teacher.s parameters: expected 6 tensors, got 2"
    ):
        teacher.update(nn.Linear(4, 2))
    for a, b in zip(teacher.module.parameters(), before, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="student must be an nn.Module"):
        EMATeacher("resnet")  # type: ignore[arg-type]


def test_buffer_mismatch_with_copy_buffers_raises_before_any_write():
    student = make_student()
    teacher = EMATeacher(student, momentum=0.5, copy_buffers=True)
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    # Same parameters, but a BatchNorm without running statistics: no buffers to copy.
    other = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(), nn.Linear(8, 2)
    )
    perturb(other, 2)
    with pytest.raises(
        ValueError, match="student must have the teacher.s buffers: expected 3 tensors, got 0"
    ):
        teacher.update(other)
    for key, value in teacher.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert teacher.num_updates == 0


@pytest.mark.parametrize("schedule", [0.99, "cosine"])
def test_non_callable_momentum_schedule_is_rejected_at_construction(schedule):
    with pytest.raises(
        TypeError, match=f"momentum_schedule must be a callable .* got {type(schedule).__name__}"
    ):
        EMATeacher(make_student(), momentum_schedule=schedule)  # type: ignore[arg-type]


def test_shape_or_dtype_mismatch_names_the_tensor_and_leaves_the_teacher_untouched():
    teacher = EMATeacher(make_student(), momentum=0.5)
    before = [p.clone() for p in teacher.module.parameters()]
    wider = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"parameters\[4\] must have shape \(2, 8\) .* \(3, 8\)"):
        teacher.update(wider)
    with pytest.raises(
        ValueError, match=r"parameters\[0\] .* dtype torch.float32, got \(8, 4\) and torch.float64"
    ):
        teacher.update(make_student().double())
    for a, b in zip(teacher.module.parameters(), before, strict=True):
        assert torch.equal(a, b)


class _Tied(nn.Module):
    """A tied weight (listed once by parameters()) and a module reached twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 3, bias=False)
        self.head = nn.Linear(3, 3, bias=False)
        self.head.weight = self.embed.weight
        self.norm = nn.BatchNorm1d(3)
        self.again = nn.Sequential(self.norm, nn.Linear(3, 2))


def _nested(depth: int) -> nn.Module:
    module: nn.Module = nn.Linear(2, 2)
    for _ in range(depth):
        module = nn.Sequential(module)
    return module


@pytest.mark.parametrize("make", [_Tied, lambda: _nested(40)], ids=["tied", "nested"])
def test_update_walks_tensors_as_parameters_and_buffers_list_them(make):
    # The update collects tensors in one walk of its own: it must list what parameters() and
    # buffers() list, in their order, shared tensors once (a tied weight lerped twice would
    # move by 1 - 0.75**2).
    torch.manual_seed(0)
    student = make()
    teacher = EMATeacher(student, momentum=0.75, copy_buffers=True)
    start = [p.detach().clone() for p in student.parameters()]
    perturb(student, 1)
    with torch.no_grad():
        for buf in student.buffers():
            buf.add_(1)
    teacher.update(student)
    moved = zip(teacher.module.parameters(), start, student.parameters(), strict=True)
    for t, t0, s in moved:
        torch.testing.assert_close(t, 0.75 * t0 + 0.25 * s)
    for t, s in zip(teacher.module.buffers(), student.buffers(), strict=True):
        assert torch.equal(t, s)
