"""Tests for protohead.augment.batched.BatchedMultiCrop (batched, per-image-random multi-crop).

Fidelity to the CPU ``MultiCropTransform`` is checked three ways: the rendered crops equal a
per-sample torchvision pipeline run with the same parameters; per-op application rates
measured on instrumented images agree with the PIL transform's; and per-crop pixel statistics
of both augmenters on the same textured images have the same distribution (KS tests).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

import protohead.augment.kernels as kernels
from protohead.augment.batched import BatchedMultiCrop
from protohead.augment.functional import resized_crops
from protohead.augment.multicrop import MultiCropTransform
from protohead.augment.params import CropParams

SMALL: dict[str, Any] = {"global_crop_size": 32, "local_crop_size": 16, "num_local_crops": 3}
NO_AUG: dict[str, Any] = {
    "flip_p": 0.0,
    "color_jitter_p": 0.0,
    "grayscale_p": 0.0,
    "global_blur_p": 0.0,
    "local_blur_p": 0.0,
    "global_solarize_p": 0.0,
    "local_solarize_p": 0.0,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}
IDENTITY_GEOMETRY: dict[str, Any] = {
    "num_local_crops": 0,
    "global_crop_size": 16,
    "global_crop_scale": (1.0, 1.0),
    "ratio": (1.0, 1.0),
}


pytestmark = pytest.mark.usefixtures("single_thread")  # see tests/conftest.py


def textured(n: int, h: int, w: int, seed: int = 0) -> Tensor:
    """Natural-looking uint8 images: smooth colour blobs plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    centres = torch.rand(n, 6, 3, generator=g)
    colours = torch.rand(n, 6, 3, 1, 1, generator=g)
    dist = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
    blobs = torch.exp(-dist / (2 * (0.05 + 0.25 * centres[..., 2, None, None]) ** 2))
    img = (colours * blobs[:, :, None]).sum(1)
    img = img / img.amax(dim=(1, 2, 3), keepdim=True) * 230 + 10 * torch.randn(
        n, 3, h, w, generator=g
    )
    return img.clamp(0, 255).round().to(torch.uint8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_crop(
    aug: BatchedMultiCrop, image: Tensor, p: CropParams, k: int, b: int, size: int
) -> Tensor:
    """One crop through torchvision's functional ops, in MultiCropTransform's order."""
    t, left, h, w = (int(getattr(p, n)[k, b]) for n in ("top", "left", "height", "width"))
    box = torch.tensor([[t, left, h, w]])
    x = resized_crops(image[None].float() / 255, torch.tensor([0]), box, size)[0]
    if p.flip[k, b]:
        x = F.horizontal_flip(x)
    if p.jitter[k, b]:
        ops: list[tuple[Callable[[Tensor, float], Tensor], Tensor]] = [
            (F.adjust_brightness, p.brightness),
            (F.adjust_contrast, p.contrast),
            (F.adjust_saturation, p.saturation),
            (F.adjust_hue, p.hue),
        ]
        for op in p.order[k, b].tolist():
            fn, factor = ops[op]
            x = fn(x, float(factor[k, b]))
    if p.grayscale[k, b]:
        x = F.rgb_to_grayscale(x, 3)
    if p.blur[k, b]:
        s = float(p.sigma[k, b])
        x = F.gaussian_blur(x, [aug.blur_kernel_size] * 2, [s, s])
    if p.solarize[k, b]:
        x = F.solarize(x, 128 / 255)
    return F.normalize(x, list(aug.mean), list(aug.std))


def test_crops_equal_torchvision_ops_with_the_same_params() -> None:
    aug = BatchedMultiCrop(**SMALL, global_solarize_p=0.5, local_solarize_p=0.5, grayscale_p=0.3)
    images = textured(5, 40, 48)
    params = aug.sample_params(torch.tensor([[40, 48]] * 5), gen(3))
    crops = aug.render(images, params)
    assert [tuple(c.shape) for c in crops] == [(5, 3, 32, 32)] + [(5, 3, 16, 16)] * 3
    groups = [(params.global_crops, 32)] * 1 + [(params.local_crops, 16)] * 3
    for i, (p, size) in enumerate(groups):
        k = 0 if i == 0 else i - 1
        for b in range(5):
            expected = reference_crop(aug, images[b], p, k, b, size)
            # Normalised units; 1e-4 is 0.006 levels on 0-255 at ImageNet std.
            assert torch.allclose(crops[i][b], expected, atol=1e-4), (i, b)


def test_accelerator_path_and_chunking_give_the_same_crops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kwargs = {**SMALL, "global_solarize_p": 0.5, "local_solarize_p": 0.5}
    images = textured(7, 40, 40)
    params = BatchedMultiCrop(**kwargs).sample_params(torch.tensor([[40, 40]] * 7), gen(0))
    cpu = BatchedMultiCrop(**kwargs, cpu_chunk_size=3).render(images, params)
    whole = BatchedMultiCrop(**kwargs, cpu_chunk_size=64).render(images, params)
    # What accelerators run: roi_align, jitter slots, every op on every sample with masks.
    monkeypatch.setattr(kernels, "compacts", lambda device: False)
    masked = BatchedMultiCrop(**kwargs).render(images, params)
    for a, b, c in zip(cpu, whole, masked, strict=True):  # equal up to float rounding
        assert torch.allclose(a, b, atol=1e-4)
        assert torch.allclose(a, c, atol=1e-4)


def test_fused_chain_compiles_without_graph_breaks_and_matches_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kwargs = {**SMALL, "global_solarize_p": 0.5, "local_solarize_p": 0.5, "grayscale_p": 0.5}
    images = textured(6, 40, 40)
    params = BatchedMultiCrop(**kwargs).sample_params(torch.tensor([[40, 40]] * 6), gen(1))
    monkeypatch.setattr(kernels, "compacts", lambda device: False)  # the accelerator path
    eager = BatchedMultiCrop(**kwargs).render(images, params)
    # fullgraph=True fails on any graph break; aot_eager traces like inductor without codegen.
    compiled = torch.compile(kernels.crop_chain, backend="aot_eager", fullgraph=True)
    monkeypatch.setattr(kernels, "fused_crop_chain", lambda: compiled)
    aug = BatchedMultiCrop(**kwargs, fuse=True, output_dtype=torch.bfloat16, channels_last=True)
    fused = aug.render(images, params)
    for a, b in zip(eager, fused, strict=True):
        assert b.dtype == torch.bfloat16 and b.is_contiguous(memory_format=torch.channels_last)
        # bf16 output: 2^-8 relative, about 0.02 normalised units at |x| <= 2.6.
        torch.testing.assert_close(b.float(), a, atol=0.03, rtol=0.0)
    with pytest.raises(TypeError, match="fuse must be a bool"):
        BatchedMultiCrop(fuse=1)  # type: ignore[arg-type]


def test_padded_batches_and_lists_match_each_image_alone() -> None:
    aug = BatchedMultiCrop(**SMALL)
    shapes = [(30, 44), (48, 36), (24, 24)]
    images = [textured(1, h, w, seed=i)[0] for i, (h, w) in enumerate(shapes)]
    padded = torch.zeros(3, 3, 48, 44, dtype=torch.uint8)
    for i, img in enumerate(images):
        padded[i, :, : img.shape[1], : img.shape[2]] = img
    sizes = torch.tensor(shapes)
    params = aug.sample_params(sizes, gen(1))
    from_padded = aug.render(padded, params, sizes)
    from_list = aug.render(images, params)
    for i, img in enumerate(images):
        alone_params = type(params)(
            params.global_crops.images(i, i + 1), params.local_crops.images(i, i + 1)
        )
        alone = aug.render(img[None], alone_params)
        for c in range(aug.num_crops):
            assert torch.allclose(from_padded[c][i], alone[c][0], atol=1e-5), (i, c)
            assert torch.equal(from_padded[c][i], from_list[c][i])


def test_generator_reproducibility_and_forward_is_sample_then_render() -> None:
    aug = BatchedMultiCrop(**SMALL)
    images = textured(4, 36, 36)
    a, b, c = (
        aug(images, generator=gen(5)),
        aug(images, generator=gen(5)),
        aug(images, generator=gen(6)),
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    params = aug.sample_params(torch.tensor([[36, 36]] * 4), gen(5))
    assert all(torch.equal(x, y) for x, y in zip(a, aug.render(images, params), strict=True))
    torch.manual_seed(0)
    d = aug(images)  # default generator
    torch.manual_seed(0)
    assert all(torch.equal(x, y) for x, y in zip(d, aug(images), strict=True))


def test_output_dtype_and_memory_format_are_honoured() -> None:
    images = textured(3, 40, 40)
    ref = BatchedMultiCrop(**SMALL)(images, generator=gen(2))
    out = BatchedMultiCrop(**SMALL, output_dtype=torch.bfloat16, channels_last=True)(
        images, generator=gen(2)
    )
    for r, o in zip(ref, out, strict=True):
        assert o.dtype == torch.bfloat16
        assert o.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(o.float(), r, atol=0.05)  # bf16 rounding of values up to ~2.6
    assert all(r.dtype == torch.float32 and r.is_contiguous() for r in ref)


def test_one_channel_images_are_repeated_to_rgb() -> None:
    gray = textured(2, 32, 32)[:, :1]
    aug = BatchedMultiCrop(**SMALL)
    a = aug(gray, generator=gen(0))
    b = aug(gray.expand(-1, 3, -1, -1).contiguous(), generator=gen(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_bad_inputs_are_rejected() -> None:
    aug = BatchedMultiCrop(**SMALL)
    good = torch.zeros(2, 3, 40, 40, dtype=torch.uint8)
    with pytest.raises(TypeError, match="images must have dtype torch.uint8, got torch.float32"):
        aug(good.float())
    with pytest.raises(ValueError, match=r"images must have shape \(b, c, h, w\).*\(3, 40, 40\)"):
        aug(good[0])
    with pytest.raises(ValueError, match=r"c in \{1, 3\}.*\(2, 4, 40, 40\)"):
        aug(torch.zeros(2, 4, 40, 40, dtype=torch.uint8))
    with pytest.raises(TypeError, match="sizes must have an integer dtype"):
        aug(good, torch.full((2, 2), 40.0))
    with pytest.raises(ValueError, match=r"sizes must have shape \(2, 2\), got \(2,\)"):
        aug(good, torch.tensor([40, 40]))
    with pytest.raises(ValueError, match=r"sizes must lie in \[1, 40\] x \[1, 40\]"):
        aug(good, torch.tensor([[40, 40], [0, 40]]))
    with pytest.raises(ValueError, match="sizes must be None when images is a list"):
        aug([good[0]], torch.tensor([[40, 40]]))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        aug(good, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="params must be MultiCropParams"):
        aug.render(good, {})  # type: ignore[arg-type]
    params = aug.sample_params(torch.tensor([[40, 40]] * 3))
    with pytest.raises(ValueError, match=r"params must hold \(1, 2\) crops per group on cpu"):
        aug.render(good, params)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="output_dtype must be a floating point dtype"):
        BatchedMultiCrop(output_dtype=torch.int64)
    with pytest.raises(TypeError, match="output_dtype must be a torch.dtype"):
        BatchedMultiCrop(output_dtype="bf16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interpolation must be InterpolationMode.BILINEAR"):
        BatchedMultiCrop(interpolation=InterpolationMode.NEAREST)
    with pytest.raises(ValueError, match=r"flip_p must be a probability in \[0, 1\], got 2.0"):
        BatchedMultiCrop(flip_p=2.0)  # checked exactly as MultiCropTransform does
    with pytest.raises(TypeError, match="channels_last must be a bool"):
        BatchedMultiCrop(channels_last=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cpu_chunk_size must be an int >= 1, got 0"):
        BatchedMultiCrop(cpu_chunk_size=0)


def test_from_transform_copies_every_setting() -> None:
    t = MultiCropTransform(num_local_crops=4, local_crop_size=64, color_jitter=(0.2, 0, 0, 0))
    aug = BatchedMultiCrop.from_transform(t, output_dtype=torch.float16)
    for name in ("num_local_crops", "local_crop_size", "color_jitter", "mean", "ratio"):
        assert getattr(aug, name) == getattr(t, name)
    assert aug.output_dtype == torch.float16 and aug.num_crops == t.num_crops == 5
    assert BatchedMultiCrop.from_transform(t, num_local_crops=2).num_local_crops == 2
    with pytest.raises(TypeError, match=r"unknown settings \['colour'\]"):
        BatchedMultiCrop.from_transform(t, colour=1)
    with pytest.raises(TypeError, match="transform must be a MultiCropTransform, got dict"):
        BatchedMultiCrop.from_transform({})  # type: ignore[arg-type]
    assert aug.state_dict() == {}  # everything is derived from the arguments
    assert "num_local_crops=4" in repr(aug)


def _rate_counts(
    kwargs: dict[str, Any], image: Tensor, changed: Callable[[Tensor], bool], n: int
) -> tuple[int, int]:
    """How often each augmenter's single enabled op visibly fires on ``image``."""
    settings = {**NO_AUG, **IDENTITY_GEOMETRY, **kwargs}
    torch.manual_seed(0)
    cpu = MultiCropTransform(**settings)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    ref = sum(changed(cpu(pil)[0]) for _ in range(n))
    crops = BatchedMultiCrop(**settings)(image[None].expand(n, -1, -1, -1), generator=gen(0))[0]
    return ref, sum(changed(c) for c in crops)


@pytest.mark.parametrize(
    ("op", "kwargs", "p"),
    [
        ("flip", {"flip_p": 0.5}, 0.5),
        ("jitter", {"color_jitter_p": 0.8}, 0.8),
        ("grayscale", {"grayscale_p": 0.2}, 0.2),
        ("blur", {"global_blur_p": 0.2, "blur_sigma": (1.0, 2.0)}, 0.2),
        ("solarize", {"global_solarize_p": 0.2}, 0.2),
    ],
)
def test_op_application_rates_match_the_cpu_transform(
    op: str, kwargs: dict[str, Any], p: float
) -> None:
    n = 500
    image = textured(1, 16, 16, seed=4)[0]
    if op == "solarize":
        image = image // 2 + 128  # every pixel is inverted when solarize fires
    original = image.float() / 255

    def changed(crop: Tensor) -> bool:
        if op == "grayscale":
            return bool((crop - crop[:1]).abs().max() < 1e-4)
        return bool((crop - original).abs().max() > 1.5 / 255)

    ref, ours = _rate_counts(kwargs, image, changed, n)
    pooled = (ref + ours) / (2 * n)
    z = abs(ref - ours) / n / math.sqrt(2 * pooled * (1 - pooled) / n)
    assert z < 4.0, (ref, ours)
    assert abs(ours / n - p) < 4 * math.sqrt(p * (1 - p) / n), ours


def ks_pvalue(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (scipy's when installed, else asymptotic)."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        x, y = a.double().sort().values, b.double().sort().values
        grid = torch.cat([x, y])
        cdf_x = torch.searchsorted(x, grid, right=True).double() / len(x)
        cdf_y = torch.searchsorted(y, grid, right=True).double() / len(y)
        lam = float((cdf_x - cdf_y).abs().max()) * math.sqrt(len(x) * len(y) / (len(x) + len(y)))
        terms = (2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
        return min(1.0, max(0.0, sum(terms))) if lam > 0 else 1.0
    return float(ks_2samp(a.double().numpy(), b.double().numpy()).pvalue)


def probe_image() -> Tensor:
    """A colour gradient with a checker texture: pixel statistics then reflect the augmentation."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    base = torch.stack([0.8 * xx + 0.1, 0.7 * (1 - yy) + 0.15, 0.3 + 0.4 * xx * yy]) * 255
    cells = torch.arange(64) // 4
    checker = ((cells[:, None] + cells[None]) % 2).float() * 40 - 20
    return (base + checker).clamp(0, 255).round().to(torch.uint8)


def crop_statistics(x: Tensor) -> Tensor:
    """Per crop: channel means, pixel std and colourfulness (mean max - min over channels)."""
    colourfulness = (x.amax(1) - x.amin(1)).mean((1, 2))
    return torch.cat([x.mean((2, 3)), x.std((1, 2, 3))[:, None], colourfulness[:, None]], 1)


def test_pixel_statistics_match_the_cpu_transform() -> None:
    # End to end: sensitive to e.g. dropping the jitter, grayscale 0.2 -> 0.3 or no solarize
    # (p < 1e-6 each); seed fixed, so deterministic.
    n, image = 300, probe_image()
    settings = {"global_crop_size": 32, "local_crop_size": 16, "num_local_crops": 2}
    torch.manual_seed(0)
    cpu = MultiCropTransform(**settings)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    ref = [cpu(pil) for _ in range(n)]
    ours = BatchedMultiCrop(**settings)(image[None].expand(n, -1, -1, -1), generator=gen(0))
    pairs = {
        "global": (torch.stack([r[0] for r in ref]), ours[0]),
        "local": (torch.stack([c for r in ref for c in r[1:]]), torch.cat(ours[1:])),
    }
    for kind, (a, b) in pairs.items():
        stats_a, stats_b = crop_statistics(a), crop_statistics(b)
        for j, name in enumerate(["mean r", "mean g", "mean b", "std", "colourfulness"]):
            assert ks_pvalue(stats_a[:, j], stats_b[:, j]) > 1e-4, (kind, name)


def test_render_rejects_boxes_sampled_for_other_image_sizes() -> None:
    aug = BatchedMultiCrop(**SMALL)
    params = aug.sample_params(torch.tensor([[2000, 2000]] * 2), gen(0))
    small = torch.full((2, 3, 20, 24), 100, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"params.global_crops crop 0 of image 0 .* \[20, 24\]"):
        aug.render(small, params)  # silently black crops before
    padded = torch.full((2, 3, 40, 40), 100, dtype=torch.uint8)
    params = aug.sample_params(torch.tensor([[40, 40]] * 2), gen(0))
    with pytest.raises(ValueError, match=r"of image 1 .* valid region \[10, 12\]"):
        aug.render(padded, params, torch.tensor([[40, 40], [10, 12]]))
    assert len(aug.render(padded, params, torch.tensor([[40, 40]] * 2))) == aug.num_crops


@pytest.mark.parametrize(
    ("sizes", "error", "match"),
    [
        (torch.tensor([[40, 40], [-5, 0]]), ValueError, r"sizes must be >= 1, got sizes\[1\]"),
        (torch.tensor([[40.0, 40.0]]), TypeError, "sizes must have an integer dtype"),
        ([[40, 40]], TypeError, r"sizes must be an integer tensor \(b, 2\), got list"),
    ],
)
def test_sample_params_checks_sizes(sizes: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BatchedMultiCrop(**SMALL).sample_params(sizes)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("mean", (0.0, 0.0, 0.0)),
        ("std", (1.0, 1.0, 1.0)),
        ("blur_sigma", (0.1, 9.0)),
        ("num_local_crops", 1),
        ("output_dtype", torch.float16),
        ("fuse", True),
        ("blur_kernel_size", 3),
        ("_mean", torch.zeros(1, 3, 1, 1)),
    ],
)
def test_settings_are_read_only(name: str, value: object) -> None:
    aug = BatchedMultiCrop(**SMALL)
    images = textured(2, 40, 40)
    before = aug(images, generator=gen(0))
    with pytest.raises(AttributeError, match=f"read-only \\(cannot set '{name}'\\); build a new"):
        setattr(aug, name, value)
    with pytest.raises(AttributeError, match=f"cannot delete '{name}'"):
        delattr(aug, name)
    after = aug(images, generator=gen(0))
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_module_machinery_still_works_with_read_only_settings() -> None:
    aug = BatchedMultiCrop(**SMALL).eval()
    assert not aug.training and aug.train().training
    aug.load_state_dict(aug.state_dict())
    assert aug.to(torch.float64)._mean.dtype == torch.float64  # buffers still move and cast
    copy = pickle.loads(pickle.dumps(aug))
    assert copy.mean == aug.mean and copy.num_crops == aug.num_crops
    aug.note = "user attributes are not settings"  # type: ignore[attr-defined]
    changed = BatchedMultiCrop.from_transform(MultiCropTransform(), mean=(0.0, 0.0, 0.0))
    assert changed.mean == (0.0, 0.0, 0.0)
