"""Statistical tests of protohead.augment.params against torchvision's samplers.

The crop boxes are compared with ``v2.RandomResizedCrop.make_params`` (what MultiCropTransform
runs) by two-sample Kolmogorov-Smirnov tests; the Bernoulli draws, factors and op orders with
binomial / uniform / chi-squared tests. Seeds are fixed, so the tests are deterministic; the
thresholds (p > 1e-3) would flag a real mismatch at these sample sizes.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torchvision.transforms import v2

from protohead.augment.params import (
    CropParams,
    MultiCropParams,
    check_generator,
    check_params,
    same_device,
    sample_crop_params,
)

N = 3000  # crops per distribution test
DEFAULTS: dict[str, Any] = {
    "ratio": (3 / 4, 4 / 3),
    "flip_p": 0.5,
    "color_jitter": (0.4, 0.4, 0.2, 0.1),
    "color_jitter_p": 0.8,
    "grayscale_p": 0.2,
    "blur_p": 0.5,
    "blur_sigma": (0.1, 2.0),
    "solarize_p": 0.2,
}


def ks_pvalue(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (scipy's when installed, else asymptotic)."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        x, y = a.double().sort().values, b.double().sort().values
        grid = torch.cat([x, y])
        cdf_x = torch.searchsorted(x, grid, right=True).double() / len(x)
        cdf_y = torch.searchsorted(y, grid, right=True).double() / len(y)
        d = float((cdf_x - cdf_y).abs().max())
        lam = d * math.sqrt(len(x) * len(y) / (len(x) + len(y)))
        terms = (2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
        return min(1.0, max(0.0, sum(terms))) if lam > 0 else 1.0
    return float(ks_2samp(a.double().numpy(), b.double().numpy()).pvalue)


def draw(sizes: Tensor, crops: int, seed: int = 0, **kwargs: Any) -> CropParams:
    options = {**DEFAULTS, "scale": (0.25, 1.0), **kwargs}
    g = torch.Generator().manual_seed(seed)
    return sample_crop_params(sizes, crops, generator=g, **options)


def reference_boxes(h: int, w: int, scale: tuple[float, float], n: int) -> dict[str, Tensor]:
    rrc = v2.RandomResizedCrop(8, scale=scale, ratio=(3 / 4, 4 / 3))
    image = torch.zeros(1, h, w)
    torch.manual_seed(0)
    params = [rrc.make_params([image]) for _ in range(n)]
    return {k: torch.tensor([p[k] for p in params], dtype=torch.float64) for k in params[0]}


@pytest.mark.parametrize(
    ("h", "w", "scale"),
    [(256, 256, (0.25, 1.0)), (256, 256, (0.05, 0.25)), (120, 300, (0.25, 1.0))],
)
def test_crop_boxes_match_random_resized_crop(h: int, w: int, scale: tuple[float, float]) -> None:
    ours = draw(torch.tensor([[h, w]]), N, scale=scale)
    ref = reference_boxes(h, w, scale, N)
    mine = {k: getattr(ours, k).flatten().double() for k in ("top", "left", "height", "width")}
    area = {"ours": mine["height"] * mine["width"], "ref": ref["height"] * ref["width"]}
    log_ratio = {
        "ours": (mine["width"] / mine["height"]).log(),
        "ref": (ref["width"] / ref["height"]).log(),
    }
    # Relative position inside the room left by the crop (0 when the crop fills the image).
    room_top = {
        "ours": mine["top"] / (h - mine["height"]).clamp_min(1),
        "ref": ref["top"] / (h - ref["height"]).clamp_min(1),
    }
    for name, stat in (("area", area), ("log ratio", log_ratio), ("top", room_top)):
        assert ks_pvalue(stat["ours"], stat["ref"]) > 1e-3, name
    assert bool((mine["top"] + mine["height"] <= h).all())
    assert bool((mine["left"] + mine["width"] <= w).all())


def test_fallback_is_torchvisions_central_crop() -> None:
    # Too wide for any allowed box at full area: every attempt fails, as in torchvision.
    ours = draw(torch.tensor([[40, 200], [200, 40]]), 5, scale=(1.0, 1.0))
    for i, (h, w) in enumerate([(40, 200), (200, 40)]):
        rrc = v2.RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(3 / 4, 4 / 3))
        expected = rrc.make_params([torch.zeros(1, h, w)])
        for k in ("top", "left", "height", "width"):
            assert ours.__getattribute__(k)[:, i].tolist() == [expected[k]] * 5, k


def test_bernoulli_rates_match_probabilities() -> None:
    p = draw(torch.tensor([[64, 64]]), 20000)
    n = 20000
    for name, prob in (
        ("flip", 0.5),
        ("jitter", 0.8),
        ("grayscale", 0.2),
        ("blur", 0.5),
        ("solarize", 0.2),
    ):
        rate = float(getattr(p, name).double().mean())
        z = abs(rate - prob) / math.sqrt(prob * (1 - prob) / n)
        assert z < 4.0, f"{name}: rate {rate} vs {prob}"


def test_jitter_factors_and_order_distributions() -> None:
    p = draw(torch.tensor([[64, 64]]), 4800)
    for name, (lo, hi) in (
        ("brightness", (0.6, 1.4)),
        ("contrast", (0.6, 1.4)),
        ("saturation", (0.8, 1.2)),
        ("hue", (-0.1, 0.1)),
        ("sigma", (0.1, 2.0)),
    ):
        values = getattr(p, name).flatten()
        assert lo <= float(values.min()) and float(values.max()) <= hi, name
        uniform = torch.rand(4800, generator=torch.Generator().manual_seed(1)) * (hi - lo) + lo
        assert ks_pvalue(values, uniform) > 1e-3, name
    counts = Counter(tuple(o) for o in p.order.reshape(-1, 4).tolist())
    assert len(counts) == 24  # every permutation of the 4 ops occurs
    expected = 4800 / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 52.0  # 23 dof, p ~ 5e-4


def test_zero_strengths_and_probabilities_give_identity_params() -> None:
    p = draw(
        torch.tensor([[32, 32]]),
        50,
        color_jitter=(0.0, 0.0, 0.0, 0.0),
        flip_p=0.0,
        grayscale_p=1.0,
    )
    assert not bool(p.jitter.any()) and not bool(p.flip.any()) and bool(p.grayscale.all())
    assert bool((p.brightness == 1).all()) and bool((p.hue == 0).all())


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50)), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
)
def test_boxes_stay_inside_each_images_valid_region(
    sizes: list[tuple[int, int]], seed: int
) -> None:
    p = draw(torch.tensor(sizes), 4, seed=seed, scale=(0.05, 1.0))
    hw = torch.tensor(sizes)
    assert bool((p.top >= 0).all()) and bool((p.left >= 0).all())
    assert bool((p.height >= 1).all()) and bool((p.width >= 1).all())
    assert bool((p.top + p.height <= hw[:, 0]).all())
    assert bool((p.left + p.width <= hw[:, 1]).all())


def test_generator_reproducibility_and_views() -> None:
    sizes = torch.tensor([[30, 40], [50, 20]])
    a, b, c = draw(sizes, 3, seed=7), draw(sizes, 3, seed=7), draw(sizes, 3, seed=8)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("top", "order", "sigma"))
    assert not torch.equal(a.sigma, c.sigma)
    part = a.images(1, 2)
    assert part.batch_size == 1 and part.num_crops == 3
    assert torch.equal(part.top[:, 0], a.top[:, 1])
    assert a.flat("order").shape == (6, 4)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"sizes must have shape \(b, 2\), got \(2,\)"):
        draw(torch.tensor([30, 40]), 2)
    with pytest.raises(ValueError, match=r"num_crops must be an int >= 0, got -1"):
        draw(torch.tensor([[30, 40]]), -1)


@pytest.mark.parametrize(
    ("sizes", "num_crops", "error", "match"),
    [
        ([[30, 40]], 2, TypeError, r"sizes must be an integer tensor \(b, 2\), got list"),
        (torch.tensor([[30.0, 40.0]]), 2, TypeError, "sizes must have an integer dtype"),
        (torch.tensor([[30, 40], [0, 5]]), 2, ValueError, r"sizes must be >= 1, got sizes\[1\]"),
        (torch.tensor([[-5, 40]]), 2, ValueError, r"sizes\[0\] = \[-5, 40\]"),
        (torch.tensor([[30, 40]]), 1.5, TypeError, r"num_crops must be an int, got float 1\.5"),
        (torch.tensor([[30, 40]]), True, TypeError, r"num_crops must be an int, got bool True"),
    ],
)
def test_sizes_and_num_crops_are_checked(
    sizes: Any, num_crops: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sample_crop_params(sizes, num_crops, scale=(0.25, 1.0), **DEFAULTS)


def test_zero_crops_are_allowed() -> None:
    p = draw(torch.tensor([[30, 40]]), 0)
    assert p.num_crops == 0 and p.batch_size == 1


def test_same_device_compares_indices() -> None:
    cuda = torch.device
    assert same_device(cuda("cpu"), cuda("cpu"))
    assert same_device(cuda("cuda", 1), cuda("cuda", 1))
    assert not same_device(cuda("cuda", 1), cuda("cuda", 0))
    assert not same_device(cuda("cpu"), cuda("cuda", 0))


def test_same_device_reads_an_index_less_device_as_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device(torch.device("cuda"), torch.device("cuda", 1))
    assert not same_device(torch.device("cuda", 0), torch.device("cuda"))


class _Cuda1Generator(torch.Generator):
    """A CPU generator that reports cuda:1, to test the device check without a GPU."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 1)


def test_generator_must_be_on_the_same_device_index() -> None:
    with pytest.raises(ValueError, match=r"generator must be on the images' device \(cuda:0\)"):
        check_generator(_Cuda1Generator(), torch.device("cuda", 0))
    check_generator(_Cuda1Generator(), torch.device("cuda", 1))
    check_generator(None, torch.device("cuda", 0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got 0"):
        check_generator(0, torch.device("cpu"))


def _params(sizes: list[list[int]], n: int = 2) -> MultiCropParams:
    crops = draw(torch.tensor(sizes), n)
    return MultiCropParams(crops, crops)


def test_check_params_accepts_parameters_sampled_for_the_batch() -> None:
    batch = torch.zeros(2, 3, 30, 40, dtype=torch.uint8)
    params = _params([[30, 40], [20, 10]])
    assert check_params(params, (2, 2), batch, torch.tensor([[30, 40], [20, 10]])) is params


def test_check_params_rejects_boxes_outside_the_valid_region() -> None:
    batch = torch.zeros(2, 3, 20, 24, dtype=torch.uint8)
    match = r"params.global_crops crop 0 of image 0 .* valid region \[20, 24\]"
    with pytest.raises(ValueError, match=match):
        check_params(_params([[2000, 2000]] * 2), (2, 2), batch, None)
    padded = torch.zeros(2, 3, 30, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"of image 1 .* valid region \[20, 10\]"):
        check_params(_params([[30, 40]] * 2), (2, 2), padded, torch.tensor([[30, 40], [20, 10]]))


def test_check_params_rejects_orders_that_are_not_permutations() -> None:
    crops = draw(torch.tensor([[30, 40]]), 1)
    bad = CropParams(**{**vars(crops), "order": torch.zeros(1, 1, 4, dtype=torch.int64)})
    batch = torch.zeros(1, 3, 30, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match="params.local_crops.order must hold permutations"):
        check_params(MultiCropParams(crops, bad), (1, 1), batch, None)


def test_check_params_rejects_wrong_types_and_shapes() -> None:
    batch = torch.zeros(2, 3, 30, 40, dtype=torch.uint8)
    with pytest.raises(TypeError, match="params must be MultiCropParams, got dict"):
        check_params({}, (2, 2), batch, None)
    with pytest.raises(TypeError, match="params.local_crops must be CropParams, got int"):
        check_params(MultiCropParams(_params([[30, 40]] * 2).global_crops, 0), (2, 2), batch, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(2, 2\) crops .* params.global_crops.top of shape"):
        check_params(_params([[30, 40]] * 3), (2, 2), batch, None)


def test_check_params_reads_no_values_off_the_cpu() -> None:
    """Off the CPU only shapes and devices are checked: a value read would sync the host (and
    fails outright on the meta device used here), so even boxes for 2000 px images pass."""
    meta = torch.zeros(1, 3, 20, 24, dtype=torch.uint8, device="meta")
    crops = draw(torch.tensor([[2000, 2000]]), 1)
    on_meta = CropParams(**{k: v.to("meta") for k, v in vars(crops).items()})
    params = MultiCropParams(on_meta, on_meta)
    assert check_params(params, (1, 1), meta, None) is params
