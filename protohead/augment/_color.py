"""Per-sample colour kernels and the two colour-jitter strategies of :mod:`.kernels`.

Float images ``(n, 3, h, w)`` in ``[0, 1]`` with one parameter per sample, torchvision's float
formulas (see :mod:`protohead.augment.kernels`, which re-exports the public names). The CPU
strategy (:func:`_jitter_grouped_`) runs each op only on the samples that use it; the
accelerator one (:func:`_jitter_slots_`) runs fixed slots on every sample with identity
parameters, so shapes never depend on data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# ITU-R 601-2 luma weights, exactly as torchvision's rgb_to_grayscale (bit-identical result).
_LUMA = (0.2989, 0.587, 0.114)
# HSV -> RGB: channel = v - c * clamp(2 - circular distance(6h, centre), 0, 1) on a circle of 6,
# the same piecewise-linear function as torchvision's sector table (r, g, b centres 3, 5, 1).
_HUE_CENTRES = (3.0, 5.0, 1.0)  # = (2 * i + 3) % 6 for i = 0, 1, 2


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


def _compare(op: Callable[..., Tensor], a: Tensor, b: Tensor | float) -> Tensor:
    """``op(a, b)`` (e.g. ``torch.eq``) as 0.0 / 1.0 in ``a``'s shape and dtype.

    On the CPU written straight as floats: a bool result, then a cast, is over 10x slower there.
    """
    if a.device.type == "cpu":
        return op(a, b, out=torch.empty(a.shape, dtype=a.dtype))
    return op(a, b).to(a.dtype)


def hue_rotate(x: Tensor, factor: Tensor, out: Tensor | None = None) -> Tensor:
    """HSV hue rotation by ``factor`` (n,) turns, as torchvision's ``adjust_hue``.

    Writes into ``out`` (which may be ``x`` itself) or a new tensor.
    """
    r, g, b = x.unbind(1)
    # Elementwise max / min: the same values as amax / amin over channels, a few times faster.
    value = torch.maximum(r, g)
    value = torch.maximum(value, b, out=value)
    low = torch.minimum(r, g)
    chroma = torch.sub(value, torch.minimum(low, b, out=low), out=low)
    # Hue in sixths times chroma; r, then g, wins ties for the maximum, as in torchvision.
    # Temporaries are recycled with out=: fewer distinct planes stay in cache.
    is_r = _compare(torch.eq, r, value)
    not_r = _compare(torch.ne, r, value)
    is_g = _compare(torch.eq, g, value).mul_(not_r)
    h6 = (g - b).mul_(is_r)
    h6.addcmul_(torch.sub(b, r, out=is_r).add_(chroma, alpha=2.0), is_g)
    h6.addcmul_(torch.sub(r, g, out=is_r).add_(chroma, alpha=4.0), not_r.sub_(is_g))  # is_b
    # Grey pixels have h6 == 0 exactly, so a tiny divisor gives hue 0 like torchvision.
    h6.div_(torch.clamp_min(chroma, 1e-12, out=is_r)).add_(factor.view(-1, 1, 1), alpha=6.0)
    h6.sub_(torch.mul(h6, 1.0 / 6.0, out=is_r).floor_(), alpha=6.0)  # mod 6
    centres = _hue_centres(x.dtype, x.device)
    # clamp(2 - circular distance, 0, 1) == clamp(|d - 3| - 1, 0, 1) for d = |h6 - centre| < 6.
    # The weights go straight to out (x is no longer read): one image-sized buffer less in cache.
    weight = torch.sub(h6.unsqueeze(1), centres, out=out)
    weight.abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return torch.addcmul(value.unsqueeze(1), chroma.unsqueeze(1), weight, value=-1.0, out=weight)


def _contrast_offsets(
    grays: list[Tensor], slices: list[tuple[int, int]], contrast: list[int], weight: Tensor
) -> list[Tensor | None]:
    """``mean(gray) * weight`` ``(s, 1, 1, 1)`` per slice (0 off ``contrast``), None if no use.

    ``grays[j]`` is the grey level of samples ``slices[j]``; ``contrast`` are the indices of the
    contrast samples, ``weight`` ``(m,)`` their mean weights. The op-by-op order reduced the
    contrast samples as one group, and a reduction's bits depend on its batch only through
    whether it is one sample (split across threads) or several: so each slice is reduced
    whole where that matches, else the contrast samples are gathered into their group.
    """
    rows = [[i - a for i in contrast if a <= i < b] for a, b in slices]
    single = len(contrast) == 1
    if all(not r or (b - a == 1) == single for r, (a, b) in zip(rows, slices, strict=True)):
        return [
            gray.mean(dim=(2, 3), keepdim=True).mul_(col(weight[a:b])) if r else None
            for gray, r, (a, b) in zip(grays, rows, slices, strict=True)
        ]
    chosen = [torch.tensor(r, dtype=torch.int64) for r in rows]
    group = torch.cat([gray.index_select(0, c) for gray, c in zip(grays, chosen, strict=True)])
    means = group.mean(dim=(2, 3)).view(-1)
    offsets: list[Tensor | None] = []
    for c, (a, b) in zip(chosen, slices, strict=True):
        offset = torch.zeros(b - a, dtype=means.dtype)
        offset[c] = means[: len(c)] * weight[a:b][c]
        means = means[len(c) :]
        offsets.append(col(offset) if len(c) else None)
    return offsets


def _blend_slices_(
    y: Tensor,
    slices: list[tuple[int, int]],
    weights: tuple[Tensor, Tensor, Tensor],
    contrast: list[int],
) -> None:
    """:func:`blend_` on the samples ``y[a:b]`` of each slice; weights ``(m,)`` for all of y."""
    scale, gray_weight, mean_weight = weights
    grays = [luma(y[a:b]) for a, b in slices]
    offsets = _contrast_offsets(grays, slices, contrast, mean_weight)
    for gray, offset, (a, b) in zip(grays, offsets, slices, strict=True):
        gray.mul_(col(gray_weight[a:b]))
        if offset is not None:  # 0 off the contrast samples: gray * w + 0 == gray * w
            gray.add_(offset)
        torch.addcmul(gray, y[a:b], col(scale[a:b]), out=y[a:b]).clamp_(0.0, 1.0)


def hue_positions(order: Tensor, apply: Tensor) -> Tensor:
    """``(n, 4), (n,) -> (n,)`` int64: where hue sits in each order, 4 where not jittered.

    :func:`_jitter_grouped_` works on the samples stably sorted by this key; inputs already in
    that order are jittered in place, without a gather and a scatter.
    """
    return torch.where(apply, (order == 3).to(torch.int64).argmax(dim=1), 4)


def _jitter_grouped_(x: Tensor, order: Tensor, factors: Tensor, apply: Tensor, hue: bool) -> Tensor:
    """CPU jitter: one reorder by hue position, then per position one hue slice and two blends.

    Shapes: x ``(n, 3, h, w)``, order and factors ``(n, 4)``, apply ``(n,)`` -> x, in place.

    Sorted by where hue sits in their order (jittered samples only), each position's hue
    samples are one slice; the rest run brightness, contrast or saturation there, each a
    :func:`blend_` with per-sample weights, so they are the slices before and after it. That
    is one gather and one scatter instead of a full reorder per position.
    """
    hue_at = hue_positions(order, apply)
    counts = torch.bincount(hue_at, minlength=5).tolist()
    bounds = [0]
    for count in counts[:4]:
        bounds.append(bounds[-1] + count)  # hue at position p: samples bounds[p]:bounds[p + 1]
    if bounds[4] == 0:
        return x
    # Samples already in this order (as the CPU renderer makes them) are jittered in place.
    presorted = bool((hue_at[1:] >= hue_at[:-1]).all())
    picked = torch.argsort(hue_at, stable=True)[: bounds[4]]
    y = x[: bounds[4]] if presorted else x.index_select(0, picked)
    ops, f = order[picked], factors[picked]
    # Weights 0 are exact (gray * 0 == 0), so one blend gives each op's own bits.
    scale = f.gather(1, ops.clamp(max=2))  # (m, 4): factor of the op at each position
    rest = 1.0 - scale
    gray_weight = torch.where(ops == 2, rest, 0.0)
    mean_weight = torch.where(ops == 1, rest, 0.0)
    ops_at = ops.t().tolist()
    for p in range(4):
        lo, hi = bounds[p], bounds[p + 1]
        slices = [(a, b) for a, b in ((0, lo), (hi, bounds[4])) if a < b]
        if slices:
            contrast = [i for i, op in enumerate(ops_at[p]) if op == 1]
            weights = (scale[:, p], gray_weight[:, p], mean_weight[:, p])
            _blend_slices_(y, slices, weights, contrast)
        if hue and lo < hi:
            hue_rotate(y[lo:hi], f[lo:hi, 3], out=y[lo:hi])
    return x if presorted else x.index_copy_(0, picked, y)


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
