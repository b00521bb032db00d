"""TReX: backbone + expendable projector + cosine classifier over online class means."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from protohead import _validation as check
from protohead._trex_checks import check_step
from protohead.backbone import BackboneAdapter, _is_timm_model
from protohead.classifier import PrototypeClassifier
from protohead.ema import EMATeacher, MomentumSchedule
from protohead.encoder import MultiCropEncoder, repeat_per_crop
from protohead.memory import MemoryInit, OnInvalid, PrototypeMemoryBank
from protohead.presets import get_preset
from protohead.projector import Projector

__all__ = ["TReX", "multicrop_cross_entropy"]

# The smallest int64: no class index can take it, so cross_entropy ignores no label.
_NO_IGNORED_INDEX = -(2**63)


def multicrop_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over all crops, every crop carrying its image's label.

    Shapes: ``logits (n b, k)`` in crop-major order, ``labels (b,) -> ()``.

    Every label counts: unlike :func:`torch.nn.functional.cross_entropy`, no value (such as its
    default ``ignore_index=-100``) is silently left out of the mean. Labels outside ``[0, k)``
    raise a ``ValueError`` for CPU tensors; on an accelerator they trip PyTorch's device-side
    bounds assertion instead, since raising a Python error would need a host sync every step.

    Args:
        logits: Logits of ``n`` crops of ``b`` images, all images of crop 0 first.
        labels: Integer class labels of the ``b`` images, in ``[0, k)``.
        label_smoothing: Passed to :func:`torch.nn.functional.cross_entropy`.

    Raises:
        ValueError: If the shapes do not fit ``(n b, k)`` and ``(b,)``, or (CPU tensors) a
            label lies outside ``[0, k)``.

    Example:
        >>> logits = torch.zeros(6, 4)  # 3 crops of 2 images, 4 classes
        >>> round(multicrop_cross_entropy(logits, torch.tensor([0, 3])).item(), 4)
        1.3863
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (n b, k), got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] == 0 or logits.shape[0] % labels.shape[0] != 0:
        raise ValueError(
            f"labels must have shape (b,) with b dividing logits.shape[0]={logits.shape[0]}, "
            f"got {tuple(labels.shape)}"
        )
    targets = repeat_per_crop(labels, logits.shape[0] // labels.shape[0])
    try:
        # No index is ignored, so torch's own bounds check (free: it runs in the kernel) covers
        # every label, -100 included.
        return F.cross_entropy(
            logits, targets, label_smoothing=label_smoothing, ignore_index=_NO_IGNORED_INDEX
        )
    except IndexError as err:  # CPU kernels raise it synchronously; name the values
        num_classes = logits.shape[1]
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.numel() == 0:
            raise
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values {outside.unique()[:8].tolist()}"
        ) from err


class TReX(nn.Module):
    """The t-ReX model of Sariyildiz et al., "No Reason for No Supervision" (ICLR 2023).

    ``student = backbone -> projector`` encodes every crop (one backbone pass per resolution,
    see :class:`MultiCropEncoder`); a :class:`PrototypeClassifier` turns the projected
    features into cosine-softmax logits. With ``memory_size > 0`` (OCM, the paper's
    default), the class weights are the normalised class means of a
    :class:`PrototypeMemoryBank` that an :class:`EMATeacher` copy of the student fills with
    its features of the global crops. In one training ``forward(crops, labels)``:

    1. the prototypes are read from the memory (before this step's features are enqueued);
    2. the student encodes all crops and the logits are computed;
    3. the teacher takes an EMA step towards the student, encodes the global crops without
       grad, and its raw projector outputs are enqueued with their labels (gathered across
       ranks when distributed).

    With ``memory_size == 0`` the class weights are learned ("plain" t-ReX), and with
    ``temperature=None`` the classifier is a plain linear layer. ``projector_hidden_layers=None``
    removes the projector; together with ``temperature=None`` and ``memory_size=0`` this is
    plain supervised training (the ``baseline`` preset).

    Shapes: ``forward([(b, c, h_i, w_i)] * n, (b,)) -> (n b, num_classes)`` crop-major;
    ``forward((b, c, h, w)) -> (b, num_classes)``.

    Args:
        backbone: A torchvision/timm model name (``"resnet50"``, ``"timm:NAME"``), a
            :class:`~protohead.BackboneAdapter`, a torchvision/timm classification model
            (always wrapped in a :class:`~protohead.BackboneAdapter`, sharing its parameters,
            so its classifier is dropped), or any module mapping images to
            ``(b, feature_dim)`` features when ``feature_dim`` is given. Other modules are
            wrapped only when ``feature_dim`` is ``None``; a torchvision model whose classifier
            was already removed (e.g. ``fc = nn.Identity()``) is used as is.
        num_classes: Number of training classes, >= 1.
        feature_dim: Backbone feature dimension; inferred for adapters, names and wrapped
            models, for which a given value must equal the inferred one.
        projector_hidden_layers: Projector depth (3: t-ReX, 1: t-ReX*), or ``None`` for none.
        projector_hidden_dim: Projector width.
        projector_out_dim: Projector bottleneck dimension.
        projector_input_l2_norm: L2-normalise the projector input.
        temperature: Cosine temperature > 0, or ``None`` for a linear classifier.
        memory_size: OCM memory slots (paper: 8192); ``0`` learns the class weights.
        ema_momentum: Momentum of the teacher (paper: 0.999).
        num_global_crops: How many leading crops are global (the teacher encodes these).
        memory_init: Initial memory state, see :class:`PrototypeMemoryBank`.
        momentum_schedule: Optional teacher momentum schedule, see :class:`EMATeacher`.
        on_invalid: Memory policy for invalid updates, see :class:`PrototypeMemoryBank`.
        small_input_stem: With a backbone name, use a small-image stem (28–32 px inputs).
        equal_batches: Every process passes equal batches (``DistributedSampler`` with
            ``drop_last=True``): the memory's distributed gather needs no host sync, see
            :class:`PrototypeMemoryBank`. Unequal batches are then not detected (gloo aborts
            the process, see :func:`~protohead.distributed.all_gather_rows`).
        fused_memory: Run the memory's step ``torch.compile``-d (``fused=True`` of
            :class:`PrototypeMemoryBank`): a dozen fused kernels instead of some thirty
            launches per step on an accelerator, with an eager fallback.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or inconsistent.

    Example:
        >>> model = TReX("resnet18", num_classes=10, projector_hidden_dim=64, memory_size=32)
        >>> crops = [torch.randn(4, 3, 64, 64)] + [torch.randn(4, 3, 32, 32)] * 2
        >>> labels = torch.randint(0, 10, (4,))
        >>> logits = model(crops, labels)
        >>> logits.shape
        torch.Size([12, 10])
        >>> model.loss(logits, labels).backward()
    """

    def __init__(
        self,
        backbone: nn.Module | str,
        num_classes: int,
        feature_dim: int | None = None,
        *,
        projector_hidden_layers: int | None = 3,
        projector_hidden_dim: int = 2048,
        projector_out_dim: int = 256,
        projector_input_l2_norm: bool = True,
        temperature: float | None = 0.1,
        memory_size: int = 8192,
        ema_momentum: float = 0.999,
        num_global_crops: int = 1,
        memory_init: MemoryInit = "random",
        momentum_schedule: MomentumSchedule | None = None,
        on_invalid: OnInvalid = "auto",
        small_input_stem: bool = False,
        equal_batches: bool = False,
        fused_memory: bool = False,
    ) -> None:
        super().__init__()
        backbone, feature_dim = _resolve_backbone(backbone, feature_dim, small_input_stem)
        memory_size = check.integer("memory_size", memory_size, minimum=0)
        num_global_crops = check.integer("num_global_crops", num_global_crops, minimum=1)

        projector: Projector | None = None
        out_dim = feature_dim
        if projector_hidden_layers is not None:
            projector = Projector(
                feature_dim,
                out_dim=projector_out_dim,
                hidden_dim=projector_hidden_dim,
                num_hidden_layers=projector_hidden_layers,
                input_l2_norm=projector_input_l2_norm,
            )
            out_dim = projector_out_dim

        memory = None
        if memory_size > 0:
            memory = PrototypeMemoryBank(
                out_dim,
                memory_size,
                num_classes,
                init=memory_init,
                on_invalid=on_invalid,
                equal_batches=equal_batches,
                fused=fused_memory,
            )
        self.student = MultiCropEncoder(backbone, projector)
        self.classifier = PrototypeClassifier(out_dim, num_classes, temperature, memory)
        self.teacher: EMATeacher | None = None
        if memory is not None:
            self.teacher = EMATeacher(
                self.student, momentum=ema_momentum, momentum_schedule=momentum_schedule
            )
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.num_global_crops = num_global_crops

    @classmethod
    def from_preset(
        cls, name: str, backbone: nn.Module | str, num_classes: int, **overrides: Any
    ) -> TReX:
        """Build a model from a named preset (see :func:`~protohead.get_preset`).

        ``overrides`` may hold any :class:`TReX` keyword argument and take precedence.

        Example:
            >>> model = TReX.from_preset("trex-star", "resnet18", num_classes=10, memory_size=64)
            >>> len([m for m in model.projector.layers if isinstance(m, nn.Linear)])
            2
        """
        return cls(backbone, num_classes, **{**get_preset(name).model_kwargs(), **overrides})

    @property
    def backbone(self) -> nn.Module:
        """The student's backbone (kept after training)."""
        return self.student.backbone

    @property
    def projector(self) -> nn.Module:
        """The student's projector (discarded after training); ``nn.Identity`` if none."""
        return self.student.head

    @property
    def memory(self) -> PrototypeMemoryBank | None:
        """The OCM memory, or ``None`` when class weights are learned."""
        return self.classifier.memory

    def forward(self, crops: Tensor | Sequence[Tensor], labels: Tensor | None = None) -> Tensor:
        """Logits for every crop; in training mode with labels, also feed the memory.

        The input is checked once, here, before the first forward pass: a rejected step leaves
        every state as it was (student and teacher BatchNorm statistics, the teacher's EMA
        weights and ``num_updates``, the memory). Form checks (types, shapes) are free. Value
        checks need a host sync, so they run only when the memory's ``on_invalid`` resolves to
        ``"raise"`` (the default on CPU), fused into one reduction and one host read: labels in
        ``[0, num_classes)`` and finite pixels in every crop. In ``"skip"`` mode (the default on
        accelerators) the step stays sync-free: the memory skips a batch with bad labels or
        non-finite teacher features, and non-finite pixels are the data pipeline's job (they
        reach the BatchNorm statistics and the loss, see the troubleshooting guide).

        With several processes in ``"raise"`` mode, the decision is collective (one small
        all-gather per step): every process raises, naming the ranks with bad input, and none
        changes any state, so the processes stay in step.

        Args:
            crops: One ``(b, c, h, w)`` tensor, or a list of crops with the global crops first.
            labels: ``(b,)`` integer labels. Required to update the memory in training mode.

        Returns:
            ``(n b, num_classes)`` logits in crop-major order.

        Raises:
            TypeError: If a crop is not a tensor, or ``labels`` not an integer tensor.
            ValueError: If the crops do not share batch size and channels, ``labels`` does not
                have shape ``(b,)``, the batch is empty in training mode; when the memory is
                updated, if there are fewer crops than ``num_global_crops`` or the global crops
                differ in size; in ``"raise"`` mode, if a label lies outside
                ``[0, num_classes)`` or a crop holds NaN or inf (in training mode). Non-finite
                teacher features (from finite pixels: a diverged model) can only be detected
                after the student and teacher ran: the memory then raises (or skips the batch)
                untouched, but the teacher's EMA step and both models' BatchNorm statistics are
                kept.
        """
        crop_list = [crops] if isinstance(crops, Tensor) else list(crops)
        memory = self.memory
        update_memory = self.training and labels is not None and memory is not None
        # Internal: _mode() resolves on_invalid="auto" for the memory's device.
        raise_mode = memory is not None and memory._mode() == "raise"
        runs = check_step(
            crop_list,
            labels,
            num_classes=self.num_classes,
            num_global_crops=self.num_global_crops,
            training=self.training,
            update_memory=update_memory,
            raise_mode=raise_mode,
            flag_device=memory.features.device if memory is not None else torch.device("cpu"),
        )
        prototypes = self.classifier.class_weights() if memory is not None else None
        logits: Tensor = self.classifier(self.student(crop_list, runs=runs), prototypes)
        if update_memory and labels is not None:
            self._feed_memory(crop_list, labels)
        return logits

    @torch.no_grad()
    def _feed_memory(self, crops: list[Tensor], labels: Tensor) -> None:
        """EMA step, teacher features of the (checked) global crops, enqueue."""
        if self.teacher is None or self.memory is None:
            return
        self.teacher.update(self.student)
        num_global = self.num_global_crops
        # check_step made sure the global crops exist and share one size: one run.
        features = self.teacher(crops[:num_global], runs=[(0, num_global)])
        self.memory.update(features, repeat_per_crop(labels, num_global))

    def loss(self, logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean cross-entropy over all crops, see :func:`multicrop_cross_entropy`."""
        return multicrop_cross_entropy(logits, labels, label_smoothing)

    @torch.no_grad()
    def extract_features(self, images: Tensor) -> Tensor:
        """Backbone features for transfer: ``(b, c, h, w) -> (b, feature_dim)``."""
        out: Tensor = self.backbone(images)
        return out

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """A snapshot of the student backbone's weights, ready for the stock model.

        The tensors are detached copies, whatever the backbone: training on, or editing the
        returned tensors, changes neither the other. For a :class:`~protohead.BackboneAdapter`
        the keys are those of the stock torchvision/timm model with only the classifier keys
        missing, so ``model.load_state_dict(sd, strict=False)`` restores the backbone.

        Example:
            >>> model = TReX("resnet18", num_classes=10, projector_hidden_dim=8, memory_size=8)
            >>> sd = model.backbone_state_dict()
            >>> sd["conv1.weight"].data_ptr() != model.backbone.model.conv1.weight.data_ptr()
            True
        """
        if isinstance(self.backbone, BackboneAdapter):
            state = self.backbone.export_state_dict()
        else:
            state = self.backbone.state_dict()
        return {k: v.detach().clone() for k, v in state.items()}


def _resolve_backbone(
    backbone: nn.Module | str, feature_dim: int | None, small_input_stem: bool
) -> tuple[nn.Module, int]:
    if isinstance(backbone, str):
        adapter = BackboneAdapter(backbone, small_input_stem=small_input_stem)
        return adapter, _checked_dim(feature_dim, adapter.feature_dim)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module or a name, got {type(backbone).__name__}")
    if small_input_stem:
        raise ValueError("small_input_stem=True needs a backbone name; build a BackboneAdapter")
    if isinstance(backbone, BackboneAdapter):
        return backbone, _checked_dim(feature_dim, backbone.feature_dim)
    # A torchvision/timm classifier returns logits, so it is wrapped even when feature_dim is
    # given: used raw it would train on class logits (feature_dim=1000) or fail later.
    if feature_dim is None or _is_library_model(backbone):
        try:
            adapter = BackboneAdapter(backbone)
        except ValueError as err:
            if feature_dim is None:
                raise ValueError(
                    "feature_dim must be given for a backbone that is not a torchvision/timm "
                    f"classifier ({err})"
                ) from err
            # No classifier to drop (e.g. fc = nn.Identity()): the model returns features.
        else:
            if feature_dim is not None and feature_dim != adapter.feature_dim:
                raise ValueError(
                    f"feature_dim must match the {adapter.arch} backbone's pooled feature "
                    f"width {adapter.feature_dim} (its classifier is dropped), got {feature_dim}"
                )
            return adapter, adapter.feature_dim
    return backbone, _checked_dim(feature_dim, feature_dim)


def _is_library_model(module: nn.Module) -> bool:
    """Whether ``module`` is (a subclass of) a torchvision or timm model class."""
    prefixes = ("torchvision.models.", "timm.models.")
    return _is_timm_model(module) or any(
        cls.__module__.startswith(prefixes) for cls in type(module).__mro__
    )


def _checked_dim(given: int | None, actual: int) -> int:
    if given is not None and given != actual:
        raise ValueError(f"feature_dim must match the backbone's {actual}, got {given}")
    return check.integer("feature_dim", actual, minimum=1)
