"""The table of released t-ReX / t-ReX* ResNet-50 weights, looked up by name.

Each entry records where the authors of "No Reason for No Supervision" (Sariyildiz et al.,
ICLR 2023) publish the weights (their repository's Model Zoo), the numbers they report for
them, and, once a maintainer has computed it, the SHA-256 of the file. protohead does not
redistribute the files: they are downloaded from the authors' server, under their licence
(CC BY-NC-SA 4.0).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PRETRAINED",
    "WEIGHTS_LICENSE",
    "PretrainedWeights",
    "list_pretrained",
    "pretrained_info",
]

WEIGHTS_LICENSE = "CC BY-NC-SA 4.0"
"""Licence of the released weights, as stated by their authors (not protohead's MIT licence)."""

_SERVER = "https://download.europe.naverlabs.com/ComputerVision/trex_models/"


@dataclass(frozen=True)
class PretrainedWeights:
    """One released model: where its files are and what its authors report for it.

    Args:
        name: Registry name, also the ``torch.hub`` entry point (e.g. ``"trex_resnet50"``).
        title: Human-readable model name.
        preset: The protohead preset it was trained with (``"trex"`` or ``"trex-star"``).
        url: The ResNet-50 weights: a torchvision ``resnet50`` state_dict without ``fc``.
        sha256: SHA-256 of the file at ``url``; ``None`` until a maintainer records it.
        imagenet_top1: ImageNet-1K validation top-1 in percent, as reported by the authors.
        transfer_log_odds: Mean transfer log-odds over the authors' 15 datasets (the 13 of the
            paper plus iNaturalist 2018 and 2019), as reported in their Model Zoo.
        full_checkpoint_url: The full training checkpoint (model, optimizer, gradient scaler),
            or ``None`` when the authors released none.
        full_checkpoint_sha256: SHA-256 of the full checkpoint, ``None`` when not recorded.
        arch: The torchvision architecture.
        license: Licence of the weights.

    Example:
        >>> info = pretrained_info("trex_resnet50")
        >>> info.title, info.imagenet_top1, info.license
        ('t-ReX (paper)', 78.0, 'CC BY-NC-SA 4.0')
    """

    name: str
    title: str
    preset: str
    url: str
    sha256: str | None
    imagenet_top1: float
    transfer_log_odds: float
    full_checkpoint_url: str | None = None
    full_checkpoint_sha256: str | None = None
    arch: str = "resnet50"
    license: str = WEIGHTS_LICENSE


# Values from the Model Zoo table of the authors' repository (github.com/naver/trex). The
# "paper" files produced the paper's results; the "repro" files were trained again with the
# authors' released code and come with full checkpoints.
PRETRAINED: dict[str, PretrainedWeights] = {
    entry.name: entry
    for entry in (
        PretrainedWeights(
            name="trex_resnet50",
            title="t-ReX (paper)",
            preset="trex",
            url=_SERVER + "trex.pth",
            sha256=None,
            imagenet_top1=78.0,
            transfer_log_odds=1.1704,
        ),
        PretrainedWeights(
            name="trex_star_resnet50",
            title="t-ReX* (paper)",
            preset="trex-star",
            url=_SERVER + "trexstar.pth",
            sha256=None,
            imagenet_top1=80.2,
            transfer_log_odds=0.8829,
        ),
        PretrainedWeights(
            name="trex_resnet50_repro",
            title="t-ReX (authors' reproduction)",
            preset="trex",
            url=_SERVER + "trex_2.pth",
            sha256=None,
            imagenet_top1=77.9,
            transfer_log_odds=1.1664,
            full_checkpoint_url=_SERVER + "trex_2_checkpoint_full.pth",
        ),
        PretrainedWeights(
            name="trex_star_resnet50_repro",
            title="t-ReX* (authors' reproduction)",
            preset="trex-star",
            url=_SERVER + "trexstar_2.pth",
            sha256=None,
            imagenet_top1=80.2,
            transfer_log_odds=0.8800,
            full_checkpoint_url=_SERVER + "trexstar_2_checkpoint_full.pth",
        ),
    )
}
"""Registry name -> :class:`PretrainedWeights`. Treat it as read-only."""


def list_pretrained() -> list[str]:
    """Names of the released weights, for :func:`~protohead.load_pretrained`.

    Example:
        >>> list_pretrained()
        ['trex_resnet50', 'trex_star_resnet50', 'trex_resnet50_repro', 'trex_star_resnet50_repro']
    """
    return list(PRETRAINED)


def pretrained_info(name: str) -> PretrainedWeights:
    """The registry entry of ``name``.

    Raises:
        TypeError: If ``name`` is not a str.
        ValueError: If ``name`` is not a registry name; the message lists the names.

    Example:
        >>> pretrained_info("trex_star_resnet50").transfer_log_odds
        0.8829
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in PRETRAINED:
        raise ValueError(f"name must be one of {list_pretrained()}, got {name!r}")
    return PRETRAINED[name]
