"""Unchecked hot-path kernels behind :mod:`protohead.augment.functional` and ``BatchedMultiCrop``.

Every kernel works on float images ``(n, 3, h, w)`` in ``[0, 1]`` with one parameter per
sample and reproduces a torchvision float formula (t-ReX multi-crop, Sariyildiz et al., ICLR
2023). Two execution strategies give the same result:

- On accelerators every op runs on every sample with masks or identity parameters, so shapes
  never depend on data and the host never waits for the device.
- On the CPU (:func:`compacts`) data-dependent shapes are free, so optional ops skip the
  samples they leave unchanged and the jitter runs each op only on the samples that use it at
  that position. Kernels there prefer in-place arithmetic and reused buffers: fresh
  image-sized temporaries (e.g. from ``where``) cost page faults, often more than the math.

Arguments are not checked here; see :mod:`protohead.augment.functional` for the checked API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from protohead.augment._separable_filters import crop_resize_separable, gaussian_blur_bags

__all__ = [
    "blend_",
    "blur_separable",
    "blur_some",
    "blur_taps",
    "color_jitter_",
    "compacts",
    "crop_chain",
    "crop_resize",
    "flip_some",
    "fused_crop_chain",
    "grayscale_some",
    "hue_rotate",
    "luma",
    "solarize_some",
]

# MultiCropTransform solarizes at 128 on the uint8 scale.
SOLARIZE_THRESHOLD = 128 / 255
# Downscale factor from which resampling averages several bilinear samples per pixel.
ANTIALIAS_FROM = 1.5
# ITU-R 601-2 luma weights, exactly as torchvision's rgb_to_grayscale (bit-identical result).
_LUMA = (0.2989, 0.587, 0.114)
# HSV -> RGB: channel = v - c * clamp(2 - circular distance(6h, centre), 0, 1) on a circle of 6,
# the same piecewise-linear function as torchvision's sector table (r, g, b centres 3, 5, 1).
_HUE_CENTRES = (3.0, 5.0, 1.0)  # = (2 * i + 3) % 6 for i = 0, 1, 2


def compacts(device: torch.device) -> bool:
    """Whether kernels may use data-dependent shapes on ``device`` (the CPU only)."""
    return device.type == "cpu"


def col(v: Tensor) -> Tensor:
    """``(n,) -> (n, 1, 1, 1)`` so a per-sample value broadcasts over an image batch."""
    return v.reshape(-1, 1, 1, 1)


def luma(x: Tensor) -> Tensor:
    """``(n, 3, h, w) -> (n, 1, h, w)`` grey level, bit-identical to torchvision's."""
    r, g, b = x.unbind(1)
    return r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def blend_(x: Tensor, scale: Tensor, gray_weight: Tensor, mean_weight: Tensor | None) -> Tensor:
    """In place ``x <- clamp(scale * x + gray_weight * gray(x) + mean_weight * mean(gray(x)))``.

    Brightness ``(f, 0, 0)``, contrast ``(f, 0, 1 - f)``, saturation ``(f, 1 - f, 0)`` and
    grayscale ``(0, 1, 0)`` are all this blend with per-sample weights ``(n,)``, as
    torchvision's ``_blend``; identity is ``(1, 0, 0)``.
    """
    gray = luma(x)
    if mean_weight is not None:
        offset = gray.mean(dim=(2, 3), keepdim=True).mul_(col(mean_weight))
        gray.mul_(col(gray_weight)).add_(offset)
    else:
        gray.mul_(col(gray_weight))
    torch.addcmul(gray, x, col(scale), out=x)
    return x.clamp_(0.0, 1.0)


def _hue_centres(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(1, 3, 1, 1)`` tensor of ``_HUE_CENTRES``, built on the device: a host tensor would
    cost a copy per call, and a cache would hide a constant from ``torch.compile``."""
    centres = torch.arange(3, dtype=dtype, device=device).mul_(2.0).add_(3.0).remainder_(6.0)
    return centres.view(1, 3, 1, 1)


def hue_rotate(x: Tensor, factor: Tensor, out: Tensor | None = None) -> Tensor:
    """HSV hue rotation by ``factor`` (n,) turns, as torchvision's ``adjust_hue``.

    Writes into ``out`` (which may be ``x`` itself) or a new tensor.
    """
    r, g, b = x.unbind(1)
    value = x.amax(dim=1)
    chroma = x.amin(dim=1).neg_().add_(value)
    # Hue in sixths times chroma; r, then g, wins ties for the maximum, as in torchvision.
    is_r = (r == value).to(x.dtype)
    not_r = 1.0 - is_r
    is_g = (g == value).to(x.dtype).mul_(not_r)
    h6 = (g - b).mul_(is_r)
    h6.addcmul_((b - r).add_(chroma, alpha=2.0), is_g)
    h6.addcmul_((r - g).add_(chroma, alpha=4.0), not_r.sub_(is_g))  # is_b
    # Grey pixels have h6 == 0 exactly, so a tiny divisor gives hue 0 like torchvision.
    h6.div_(chroma.clamp_min(1e-12)).add_(factor.view(-1, 1, 1), alpha=6.0)
    h6.sub_(h6.mul(1.0 / 6.0).floor_(), alpha=6.0)  # mod 6
    centres = _hue_centres(x.dtype, x.device)
    # clamp(2 - circular distance, 0, 1) == clamp(|d - 3| - 1, 0, 1) for d = |h6 - centre| < 6.
    weight = (h6.unsqueeze(1) - centres).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return torch.addcmul(value.unsqueeze(1), chroma.unsqueeze(1), weight, value=-1.0, out=out)


def _jitter_op_(x: Tensor, op: int, f: Tensor) -> Tensor:
    """Op ``op`` (0 brightness, 1 contrast, 2 saturation, 3 hue) with factors ``(n,)``."""
    if op == 0:
        return x.mul_(col(f)).clamp_(0.0, 1.0)
    if op == 1:
        return blend_(x, f, torch.zeros_like(f), 1.0 - f)
    if op == 2:
        return blend_(x, f, 1.0 - f, None)
    return hue_rotate(x, f, out=x)  # reads only values derived from x before writing


def _jitter_grouped_(x: Tensor, order: Tensor, factors: Tensor, apply: Tensor, hue: bool) -> Tensor:
    """CPU jitter: at each position, sort samples by op and run each op on its slice only."""
    n = x.shape[0]
    holder = torch.arange(n, device=x.device)  # x[i] currently holds sample holder[i]
    spare = torch.empty_like(x)  # ping-pong buffer: fresh allocations are slow on CPU
    codes = torch.where(apply[:, None], order, 4)  # 4: not jittered
    for position in range(4):
        op_here = codes[holder, position]
        by_op = torch.argsort(op_here, stable=True)
        x, spare = torch.index_select(x, 0, by_op, out=spare), x
        holder = holder[by_op]
        start = 0
        for op, count in enumerate(torch.bincount(op_here, minlength=5)[:4].tolist()):
            if count and (op < 3 or hue):
                _jitter_op_(
                    x[start : start + count], op, factors[holder[start : start + count], op]
                )
            start += count
    return torch.index_select(x, 0, torch.argsort(holder), out=spare)


def _jitter_slots_(x: Tensor, order: Tensor, factors: Tensor, apply: Tensor, hue: bool) -> Tensor:
    """Mask-free jitter for accelerators: fixed blend slots around one hue pass.

    A sample with hue at position ``p`` of its order runs its ``p`` earlier ops in the 3 blend
    slots before the hue pass and its ``3 - p`` later ops in the 3 slots after it (identity
    elsewhere), so every order costs 6 blends and 1 hue pass. Without hue, 4 slots.
    """
    n = x.shape[0]
    # Identity factors (1, 1, 1, 0) built on the device: a host tensor would cost a copy + sync.
    unchanged = torch.ones_like(factors[:1])
    unchanged[:, 3] = 0.0
    f = torch.where(apply[:, None], factors, unchanged)
    zero = torch.zeros_like(f[:, 0])
    # (n, op, (scale, gray_weight, mean_weight)) for op 0 brightness, 1 contrast, 2 saturation.
    coef = torch.stack(
        [
            torch.stack([f[:, 0], zero, zero], 1),
            torch.stack([f[:, 1], zero, 1.0 - f[:, 1]], 1),
            torch.stack([f[:, 2], 1.0 - f[:, 2], zero], 1),
        ],
        1,
    )
    identity = torch.zeros_like(coef[:, 0])
    identity[:, 0] = 1.0
    hue_pos = (order == 3).to(torch.int64).argmax(dim=1)
    shifts = [-3, -2, -1, 1, 2, 3] if hue else [0, 1, 2, 3]
    for s, shift in enumerate(shifts):
        pos = hue_pos + shift if hue else torch.full_like(hue_pos, shift)
        op = order.gather(1, pos.clamp(0, 3)[:, None]).squeeze(1)
        picked = coef.gather(1, op.clamp(max=2)[:, None, None].expand(n, 1, 3)).squeeze(1)
        # Out-of-range slots and hue's own position (no-hue schedule) are identity.
        c = torch.where(((pos >= 0) & (pos <= 3) & (op < 3))[:, None], picked, identity)
        blend_(x, c[:, 0], c[:, 1], c[:, 2])
        if hue and s == 2:
            x = hue_rotate(x, f[:, 3])
    return x


def color_jitter_(
    x: Tensor, order: Tensor, factors: Tensor, apply: Tensor, use_hue: bool = True
) -> Tensor:
    """Per-sample ColorJitter on the samples where ``apply``; in place, may return a new tensor.

    ``order`` ``(n, 4)`` are permutations of 0 brightness, 1 contrast, 2 saturation, 3 hue;
    ``factors`` ``(n, 4)``; ``use_hue=False`` promises every hue factor is 0 (skips that pass).
    """
    if compacts(x.device):
        return _jitter_grouped_(x, order, factors, apply, use_hue)
    return _jitter_slots_(x, order, factors, apply, use_hue)


def blur_taps(sigma: Tensor, apply: Tensor, kernel_size: int) -> Tensor:
    """``(n,) -> (n, k)`` normalised Gaussian taps (as torchvision); an impulse if not applied."""
    half = kernel_size // 2
    t = torch.linspace(-half, half, kernel_size, dtype=sigma.dtype, device=sigma.device)
    w = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    w = w / w.sum(dim=1, keepdim=True)
    impulse = (t == 0).to(w.dtype).expand_as(w)
    return torch.where(apply[:, None], w, impulse)


def blur_separable(x: Tensor, weights: Tensor, shift: bool | None = None) -> Tensor:
    """Separable blur with per-sample taps ``(n, k)`` and reflect padding (as torchvision).

    Three equal formulations: shift-and-add (``shift=True``; the form ``torch.compile`` fuses
    into one kernel per axis), a grouped convolution, one kernel per sample and channel
    (``shift=False``; the eager default on accelerators) and, the default on the CPU, weighted
    row gathers (:func:`~protohead.augment._separable_filters.gaussian_blur_bags`: a few times
    faster than shift-and-add there, which beats the convolution several times over).
    """
    if shift is None:
        if x.device.type == "cpu":
            return gaussian_blur_bags(x, weights)
        shift = False
    if shift:
        return _blur_shift(x, weights)
    return _blur_conv(x, weights)


def _blur_conv(x: Tensor, weights: Tensor) -> Tensor:
    n, c, h, w = x.shape
    k = weights.shape[1]
    half = k // 2
    taps = weights.repeat_interleave(c, dim=0)  # one depthwise kernel per (sample, channel)
    padded = F.pad(x, (half, half, half, half), mode="reflect").view(1, n * c, h + k - 1, -1)
    out = F.conv2d(padded, taps.view(n * c, 1, k, 1), groups=n * c)
    out = F.conv2d(out, taps.view(n * c, 1, 1, k), groups=n * c)
    return out.view(n, c, h, w)


def _blur_shift(x: Tensor, weights: Tensor) -> Tensor:
    n, _, h, w = x.shape
    k = weights.shape[1]
    half = k // 2
    taps = weights.view(n, 1, 1, 1, k)
    # Rows first (contiguous slices), then the same on the transposed image for the columns.
    padded = F.pad(x, (0, 0, half, half), mode="reflect")
    rows = padded[:, :, :h] * taps[..., 0]
    for t in range(1, k):
        rows.addcmul_(padded[:, :, t : t + h], taps[..., t])
    padded = F.pad(rows, (half, half, 0, 0), mode="reflect").transpose(2, 3)
    cols = padded[:, :, :w] * taps[..., 0]
    for t in range(1, k):
        cols.addcmul_(padded[:, :, t : t + w], taps[..., t])
    return cols.transpose(2, 3)


def _selected(mask: Tensor) -> Tensor | None:
    """Indices where ``mask`` is true where that is free (CPU), else None (use the mask)."""
    return mask.nonzero().squeeze(1) if compacts(mask.device) else None


def _on_some(
    x: Tensor,
    mask: Tensor,
    op: Callable[[Tensor], Tensor],
    masked_op: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``op`` on the samples where ``mask`` (n,) is true: compacted on CPU, masked elsewhere."""
    index = _selected(mask)
    if index is None:
        return masked_op(x, col(mask))
    if index.numel() > 0:
        x.index_copy_(0, index, op(x.index_select(0, index)))
    return x


def grayscale_some(x: Tensor, mask: Tensor) -> Tensor:
    """3-channel luma for the samples where ``mask``; in place, may return a new tensor."""

    def masked(y: Tensor, m: Tensor) -> Tensor:
        weight = m.reshape(-1).to(y.dtype)
        return blend_(y, 1.0 - weight, weight, None)

    return _on_some(x, mask, lambda y: luma(y).expand(-1, 3, -1, -1), masked)


def solarize_some(x: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """Inverts pixels ``>= threshold`` of the samples where ``mask``; may return a new tensor."""

    def every(y: Tensor) -> Tensor:  # in place: fewer image-sized temporaries than where()
        return y.addcmul_((y >= threshold).to(y.dtype), 1.0 - 2.0 * y)

    def masked(y: Tensor, m: Tensor) -> Tensor:
        return torch.where((y >= threshold) & m, 1.0 - y, y)

    return _on_some(x, mask, every, masked)


def flip_some(x: Tensor, mask: Tensor) -> Tensor:
    """Mirrors left-right the samples where ``mask``; may return a new tensor."""
    return _on_some(x, mask, lambda y: y.flip(-1), lambda y, m: torch.where(m, y.flip(-1), y))


def blur_some(x: Tensor, taps: Tensor, mask: Tensor, shift: bool | None = None) -> Tensor:
    """:func:`blur_separable` on the samples where ``mask`` (taps are an impulse elsewhere)."""
    index = _selected(mask)
    if index is None:
        return blur_separable(x, taps, shift)
    if index.numel() > 0:
        x.index_copy_(0, index, blur_separable(x.index_select(0, index), taps[index]))
    return x


def crop_resize(
    images: Tensor, index: Tensor, boxes: Tensor, size: tuple[int, int], valid: Tensor | None = None
) -> Tensor:
    """Box ``i`` of image ``index[i]`` resampled to ``size`` (see ``resized_crops``).

    Boxes at least ``ANTIALIAS_FROM`` times the output size (larger side) get roi_align's
    adaptive supersampling (``ceil(box / size)`` bilinear samples per pixel and axis, averaged);
    smaller ones plain bilinear interpolation (one sample), which is also closer to
    torchvision's antialiased bicubic there (measured MAE 1.04-1.10 vs 1.17-1.27 levels).

    On the CPU (:func:`compacts`) the same resampling runs in its separable form
    (:func:`~protohead.augment._separable_filters.crop_resize_separable`), which reads only each
    box's window, so ``images`` may also be uint8 (scaled to [0, 1]) with per-image ``valid`` sizes
    ``(b, 2)`` that clamp the taps like the image border. Elsewhere ``images`` are float and
    ``valid`` must be None (pad with :func:`~protohead.augment.image_batch.valid_region_float`).
    """
    if compacts(images.device):
        return crop_resize_separable(images, index, boxes, size, valid)
    top, left, height, width = boxes.to(images.dtype).unbind(1)
    rois = torch.stack([index.to(images.dtype), left, top, left + width, top + height], dim=1)
    plain = torch.maximum(height / size[0], width / size[1]) < ANTIALIAS_FROM
    bilinear = roi_align(images, rois, size, 1.0, 1, True)
    supersampled = roi_align(images, rois, size, 1.0, -1, True)
    out: Tensor = torch.where(col(plain), bilinear, supersampled)
    return out


def crop_chain(
    x: Tensor,
    order: Tensor,
    factors: Tensor,
    jitter_mask: Tensor,
    gray_mask: Tensor,
    sigma: Tensor,
    blur_mask: Tensor,
    solarize_mask: Tensor,
    flip_mask: Tensor,
    mean: Tensor,
    std: Tensor,
    *,
    jitter: bool,
    hue: bool,
    grayscale: bool,
    blur_size: int,
    solarize: bool,
    flip: bool,
    fused: bool,
    out_dtype: torch.dtype,
    normalize: bool = True,
) -> Tensor:
    """Colour ops, blur, solarize, flip and normalisation of ``BatchedMultiCrop``'s crops.

    Shapes: ``(n, 3, s, s)`` float in ``[0, 1]`` -> ``(n, 3, s, s)`` normalised.

    Per-sample parameters are ``(n,)`` (``order``/``factors`` ``(n, 4)``); the keyword flags
    are static, so a compiled version specialises on them. ``fused`` picks the formulation
    that ``torch.compile`` turns into a few fused kernels (masked ops, shift-and-add blur,
    out-of-place normalisation and cast); otherwise the device's eager kernels run in place.
    ``normalize=False`` returns the crops in ``[0, 1]`` for a caller that normalises them while
    writing its outputs.
    """
    if jitter:
        x = color_jitter_(x, order, factors, jitter_mask, hue)
    if grayscale:
        x = grayscale_some(x, gray_mask)
    if blur_size:
        taps = blur_taps(sigma, blur_mask, blur_size)
        x = blur_some(x, taps, blur_mask, shift=True if fused else None)
    if solarize:
        x = solarize_some(x, solarize_mask, SOLARIZE_THRESHOLD)
    if flip:
        # Every op after the crop is mirror-symmetric, so flipping last equals flipping first.
        x = flip_some(x, flip_mask)
    if not normalize:
        return x
    if fused:
        return ((x - mean) / std).to(out_dtype)
    # In place, then the caller's copy casts and lays out: a fused broadcast multiply-add into
    # a strided output is several times slower on CPU.
    return x.sub_(mean).div_(std)


@functools.cache
def fused_crop_chain() -> Callable[..., Tensor]:
    """``torch.compile`` of :func:`crop_chain`, built once per process on first use."""
    return torch.compile(crop_chain)
