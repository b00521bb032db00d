"""The rows of ``bench_peers.py``: for each, protohead and one peer doing identical work.

A :class:`Row` names the work and the peer; its ``build`` makes a :class:`Case` (both
callables, how to time one call, items per call). Peer packages are imported inside
``build``, so listing rows needs none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _baselines import AuthorsMemory, AuthorsMultiCrop, authors_ema_update
from _timing import cpu_seconds, median_seconds, timed

__all__ = ["Case", "Row", "all_rows"]

Fn = Callable[[], object]
Measure = Callable[[Fn], float]
MEMORY_DIM = 256  # t-ReX's projector output, what the memory stores


@dataclass(frozen=True)
class Case:
    """What one row times: both sides, how to time a call, items per call."""

    ours: Fn
    peer: Fn
    measure: Measure
    items: int = 1  # times are reported per item (e.g. per image)
    unit: str = ""
    note: Callable[[], str] | None = None  # appended to the peer's name after timing


@dataclass(frozen=True)
class Row:
    id: str
    work: str
    peer: str
    build: Callable[[], Case]
    threads: int
    needs: str | None = None  # peer package the row needs: "lightly", "timm" or "sklearn"


def _wall(repeats: int) -> Measure:
    return lambda fn: median_seconds(fn, repeats, warmup=1)


def _cpu(fn: Fn) -> float:
    return cpu_seconds(fn)


# --------------------------------------------------------------------------- memory


def _memory_case(size: int, classes: int, batch: int, mode: str, peer: str) -> Case:
    from protohead import PrototypeMemoryBank

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, MEMORY_DIM, generator=gen)
    labels = torch.randint(0, classes, (batch,), generator=gen)
    ours = PrototypeMemoryBank(MEMORY_DIM, size, classes, on_invalid=mode, generator=gen)

    def step_ours() -> None:
        ours.prototypes()
        ours.update(feats, labels)

    if peer == "authors":
        theirs = AuthorsMemory(MEMORY_DIM, size, classes)

        def step_peer() -> None:
            theirs.prototypes()
            theirs.update(feats, labels)

    else:
        from lightly.models.modules.memory_bank import MemoryBankModule

        # lightly's bank is a feature FIFO without labels: a second bank carries them.
        bank = MemoryBankModule((size, MEMORY_DIM), feature_dim_first=False)
        label_bank = MemoryBankModule((size, 1), feature_dim_first=False)
        label_bank.bank.copy_(torch.randint(0, classes, (size, 1), generator=gen))
        flabels = labels[:, None].float()

        def step_peer() -> None:
            _, stored = bank(feats, update=True)
            _, stored_labels = label_bank(flabels, update=True)
            sums = torch.zeros(classes, MEMORY_DIM).index_add_(
                0, stored_labels[:, 0].long(), stored
            )
            torch.nn.functional.normalize(sums, dim=1)

    slow = median_seconds(step_peer, 1, warmup=1)
    return Case(step_ours, step_peer, _wall(max(3, min(30, int(0.3 / max(slow, 1e-6))))))


def memory_rows(quick: bool, threads: int) -> list[Row]:
    paper = (8192, 1000, 256)
    if quick:
        configs = [(2048, 10, 64, "raise"), (*paper, "raise"), (*paper, "skip")]
    else:
        sweep = [(m, 1000, 256) for m in (2048, 65536, 262144)]
        sweep += [(8192, c, 256) for c in (10, 10000)] + [(8192, 1000, b) for b in (64, 4096)]
        configs = [(*paper, "raise"), (*paper, "skip"), (262144, 1000, 256, "skip")]
        configs += [(*c, "raise") for c in sweep]
    peers = {"authors": "authors' re-reduce every step", "lightly": "lightly MemoryBankModule"}
    return [
        Row(
            f"memory/M{m}-C{c}-B{b}-{mode}/{peer}",
            f"memory step (prototypes + update), M={m} C={c} B={b} dim {MEMORY_DIM}, {mode}",
            label,
            lambda m=m, c=c, b=b, mode=mode, peer=peer: _memory_case(m, c, b, mode, peer),
            threads,
            None if peer == "authors" else "lightly",
        )
        for m, c, b, mode in configs
        for peer, label in peers.items()
    ]


# --------------------------------------------------------------------------- EMA


def _ema_case(arch: str, peer: str) -> Case:
    import torchvision

    from protohead import EMATeacher

    student = torchvision.models.get_model(arch)
    if peer == "authors":
        ours = EMATeacher(student, momentum=0.999)
        teacher = [p.detach().clone() for p in student.parameters()]
        params = list(student.parameters())

        def peer_fn() -> None:
            authors_ema_update(teacher, params, 0.999)

    else:
        from timm.utils import ModelEmaV3

        ours = EMATeacher(student, momentum=0.999, copy_buffers=True)
        theirs = ModelEmaV3(student, decay=0.999, exclude_buffers=True)

        def peer_fn() -> None:
            theirs.update(student)

    return Case(lambda: ours.update(student), peer_fn, _wall(5))


def ema_rows(quick: bool, threads: int) -> list[Row]:
    archs = ["resnet18"] if quick else ["resnet18", "resnet50", "resnet101"]
    rows = []
    for arch in archs:
        rows.append(
            Row(
                f"ema/{arch}/authors",
                f"EMA teacher update, {arch} (parameters)",
                "authors' per-parameter loop",
                lambda arch=arch: _ema_case(arch, "authors"),
                threads,
            )
        )
        rows.append(
            Row(
                f"ema/{arch}/timm",
                f"EMA teacher update, {arch} (parameters + buffer copy)",
                "timm ModelEmaV3",
                lambda arch=arch: _ema_case(arch, "timm"),
                threads,
                "timm",
            )
        )
    return rows


# --------------------------------------------------------------------------- multi-crop


def _lightly_multicrop(t: Any) -> Callable[[Any], list[torch.Tensor]]:
    from lightly.transforms.dino_transform import DINOViewTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform

    def view(kind: str) -> DINOViewTransform:
        brightness, contrast, saturation, hue = t.color_jitter
        return DINOViewTransform(
            crop_size=getattr(t, f"{kind}_crop_size"),
            crop_scale=getattr(t, f"{kind}_crop_scale"),
            hf_prob=t.flip_p,
            cj_prob=t.color_jitter_p,
            cj_strength=1.0,
            cj_bright=brightness,
            cj_contrast=contrast,
            cj_sat=saturation,
            cj_hue=hue,
            random_gray_scale=t.grayscale_p,
            gaussian_blur=getattr(t, f"{kind}_blur_p"),
            sigmas=t.blur_sigma,
            solarization_prob=getattr(t, f"{kind}_solarize_p"),
            normalize={"mean": list(t.mean), "std": list(t.std)},
        )

    views = [view("global")] * t.num_global_crops + [view("local")] * t.num_local_crops
    return MultiViewTransform(views)  # type: ignore[no-any-return]


def _multicrop_case(height: int, width: int, count: int, ours_kind: str, peer: str) -> Case:
    from PIL import Image

    from protohead.augment.batched import BatchedMultiCrop
    from protohead.augment.multicrop import MultiCropTransform

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=gen)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    transform = MultiCropTransform()  # the paper's crops: 1 x 224 + 8 x 96

    def per_image(fn: Callable[[Any], object]) -> Fn:
        return lambda: [fn(img) for img in pil]

    if ours_kind == "pil":
        ours = per_image(transform)
    else:
        batched = BatchedMultiCrop.from_transform(transform)
        ours = lambda: batched(images, generator=gen)  # noqa: E731
    peers = {
        "authors": lambda: AuthorsMultiCrop(transform),
        "lightly": lambda: _lightly_multicrop(transform),
        "protohead-pil": lambda: transform,
    }
    return Case(ours, per_image(peers[peer]()), _cpu, items=count, unit="/img")


def multicrop_rows(quick: bool) -> list[Row]:
    sources = [(256, 256)] if quick else [(256, 256), (375, 500)]
    count = 4 if quick else 32
    kinds = [
        ("pil", "authors", "authors' PIL (torchvision v1 per image)", None),
        ("pil", "lightly", "lightly DINO view transforms (PIL)", "lightly"),
        ("batched", "authors", "authors' PIL (torchvision v1 per image)", None),
        ("batched", "protohead-pil", "protohead MultiCropTransform (PIL)", None),
    ]
    rows = []
    for h, w in sources:
        for ours, peer, label, needs in kinds:
            side = "MultiCropTransform (PIL)" if ours == "pil" else "BatchedMultiCrop on CPU"
            rows.append(
                Row(
                    f"multicrop/{w}x{h}/{ours}/{peer}",
                    f"multi-crop 1x224 + 8x96 of {w}x{h} images, {side}, 1 thread",
                    label,
                    lambda h=h, w=w, ours=ours, peer=peer: _multicrop_case(h, w, count, ours, peer),
                    1,
                    needs,
                )
            )
    return rows


# --------------------------------------------------------------------------- logreg


def _logreg_case(quick: bool) -> Case:
    from bench_logreg import make_data, objective
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    from protohead.evaluation import LogisticRegression

    n, d, k, c, scale = (2_000, 64, 10, 0.05, 0.3) if quick else (10_000, 512, 100, 0.1, 0.2)
    x, y, _, _ = make_data(n, 1, d, k, scale)
    x_np, y_np = x.numpy(), y.numpy()
    tol = 1e-4  # scikit-learn's default; both stop on the same mean-scaled gradient
    fits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def ours() -> None:
        model = LogisticRegression(c, tol=tol).fit(x, y)
        fits["ours"] = (model.coef_, model.intercept_)

    def peer() -> None:
        model = SkLogisticRegression(C=c, tol=tol, max_iter=5000).fit(x_np, y_np)
        fits["peer"] = (torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_))

    def note() -> str:  # equal tol is only fair if both reach the optimum alike
        ours_obj, peer_obj = (objective(x, y, *fits[side], c) for side in ("ours", "peer"))
        return f"objective {peer_obj:.5f}, protohead {ours_obj:.5f}"

    return Case(ours, peer, lambda fn: timed(fn)[1], note=note)


def logreg_rows(quick: bool) -> list[Row]:
    size = "2,000 x 64, 10 classes" if quick else "10,000 x 512, 100 classes, C 0.1"
    return [
        Row(
            f"logreg/{threads}-thread/sklearn",
            f"logistic regression fit, {size}, tol 1e-4, {threads} thread(s)",
            "scikit-learn lbfgs",
            lambda: _logreg_case(quick),
            threads,
            "sklearn",
        )
        for threads in (1, 2)
    ]


# --------------------------------------------------------------------------- training step


def _step_case(quick: bool, peer: str) -> Case:
    from bench_train_step import _step

    from protohead import TReX, get_preset

    batch, (g, loc) = (2, (64, 28)) if quick else (8, (224, 96))
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(batch, 3, g, g, generator=gen)]
    crops += [torch.randn(batch, 3, loc, loc, generator=gen) for _ in range(8)]
    crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
    labels = torch.randint(0, 100, (batch,), generator=gen)

    def model(preset: str) -> TReX:
        kwargs = get_preset(preset).model_kwargs()
        return TReX("resnet18", 100, **kwargs, on_invalid="skip").to(
            memory_format=torch.channels_last
        )

    ours = model("trex")
    other = model("baseline" if peer == "baseline" else "trex")
    if peer == "authors":  # same model, the paper's blocks done the straightforward way
        memory = other.memory
        assert memory is not None and other.teacher is not None
        other.classifier.memory = AuthorsMemory(memory.dim, memory.size, memory.num_classes)
        teacher = other.teacher

        def loop_update(student: torch.nn.Module) -> None:
            authors_ema_update(teacher.module.parameters(), student.parameters(), 0.999)

        teacher.update = loop_update  # type: ignore[method-assign]
    for m in (ours, other):
        m.train()
    return Case(_step(ours, crops, labels), _step(other, crops, labels), _wall(1 if quick else 2))


def step_rows(quick: bool, threads: int) -> list[Row]:
    crops = "64 + 8x28 px, batch 2" if quick else "224 + 8x96 px, batch 8"
    work = f"t-ReX training step, resnet18, {crops}"
    # As in bench_train_step.py: the target holds for the paper's crops, where the backbone
    # dominates; tiny crops weigh the projector's fixed cost far more.
    target = "informative at tiny crops" if quick else "target >= 0.80, t-ReX <= 1.25x baseline"
    return [
        Row(
            "step/authors",
            work,
            "t-ReX with authors' memory + EMA",
            lambda: _step_case(quick, "authors"),
            threads,
        ),
        Row(
            "step/baseline",
            f"{work} (overhead: {target})",
            "plain supervised step, same crops",
            lambda: _step_case(quick, "baseline"),
            threads,
        ),
    ]


def all_rows(quick: bool, threads: int) -> list[Row]:
    return (
        memory_rows(quick, threads)
        + ema_rows(quick, threads)
        + multicrop_rows(quick)
        + logreg_rows(quick)
        + step_rows(quick, threads)
    )
