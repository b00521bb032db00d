"""Backbone adapter: a classification network turned into a pooled feature extractor.

t-ReX and t-ReX* (Sariyildiz et al., "No Reason for No Supervision: Improved Generalization in
Supervised Models", ICLR 2023) train a standard classification backbone (ResNet-50 in the paper)
whose pooled, pre-logit feature feeds an expendable MLP projector and a cosine-softmax classifier.
Only the backbone is kept for transfer. :class:`BackboneAdapter` removes the stock classifier of a
torchvision (or timm) model so that it returns that pooled feature, and exports weights with the
stock key names so they load back into the unmodified architecture.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any, cast

import torchvision.models as tv_models
from torch import Tensor, nn

__all__ = ["BackboneAdapter"]

_TIMM_PREFIX = "timm:"
# Attribute names under which torchvision classification models keep their classifier.
_HEAD_NAMES = ("fc", "classifier", "heads", "head")
# Auxiliary classifiers of googlenet / inception_v3, only used in training mode.
_AUX_HEAD_NAMES = ("aux1", "aux2", "AuxLogits")
_DROPOUTS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_SMALL_STEM_FAMILIES = "ResNet-family (resnet*, wide_resnet*, resnext*) and ConvNeXt (convnext_*)"


def _shallow_copy(module: nn.Module) -> nn.Module:
    """Copy ``module`` itself but share its parameters, buffers and children.

    The container dicts (children, parameters, buffers, hooks) are copied so that later edits of
    the copy never show up in the original.
    """
    clone = copy.copy(module)
    for name, value in vars(module).items():
        if isinstance(value, (dict, set)):
            clone.__dict__[name] = copy.copy(value)
    return clone


class _CopyOnWrite:
    """Edits a module tree without touching it: only modules on edited paths are copied."""

    def __init__(self, root: nn.Module) -> None:
        self._owned: dict[int, nn.Module] = {}
        self.root = self._own(root)

    def _own(self, module: nn.Module) -> nn.Module:
        clone = _shallow_copy(module)
        self._owned[id(clone)] = clone
        return clone

    def get(self, path: str) -> nn.Module:
        """Return the (possibly copied) module at dotted ``path``, copying along the way."""
        module = self.root
        for name in path.split(".") if path else []:
            child = module._modules[name]
            if child is None:
                raise KeyError(path)
            if id(child) not in self._owned:
                child = self._own(child)
                module._modules[name] = child
            module = child
        return module

    def replace(self, path: str, new: nn.Module | None) -> None:
        """Put ``new`` at dotted ``path`` in the copy; the original tree is left as it was."""
        parent_path, _, leaf = path.rpartition(".")
        self.get(parent_path)._modules[leaf] = new


def _is_timm_model(model: nn.Module) -> bool:
    return all(
        callable(getattr(type(model), name, None))
        for name in ("forward_features", "forward_head", "get_classifier")
    )


def _build_named(name: str, weights: str | None, model_kwargs: dict[str, Any]) -> nn.Module:
    if name.startswith(_TIMM_PREFIX):
        timm_name = name[len(_TIMM_PREFIX) :]
        try:
            timm = importlib.import_module("timm")
        except ImportError as err:
            raise ImportError(
                f"model {name!r} needs the optional dependency timm; "
                "install it with `pip install protohead[timm]`"
            ) from err
        if not timm.is_model(timm_name):
            raise ValueError(
                f"model {name!r} is not a known timm model; "
                "see timm.list_models() for valid names (prefix them with 'timm:')"
            )
        built: nn.Module = timm.create_model(
            timm_name, pretrained=weights is not None, **model_kwargs
        )
        return built
    if name not in tv_models.list_models(module=tv_models):
        raise ValueError(
            f"model must be a torchvision classification model name or 'timm:<name>', "
            f"got {name!r}; see torchvision.models.list_models(module=torchvision.models) "
            "for valid names"
        )
    built = tv_models.get_model(name, weights=weights, **model_kwargs)
    return built


def _strip_torchvision_head(tree: _CopyOnWrite, arch: str) -> int:
    """Replace the classifier by identities in ``tree``; return the pooled feature dim."""
    root = tree.root
    name = next((n for n in _HEAD_NAMES if root._modules.get(n) is not None), None)
    if name is None:
        raise ValueError(
            f"model {arch!r} has no classification head: looked for a child named one of "
            f"{list(_HEAD_NAMES)}"
        )
    head = root._modules[name]
    if isinstance(head, nn.Linear):
        tree.replace(name, nn.Identity())
        return head.in_features
    if isinstance(head, nn.Sequential):
        entries = list(head._modules.items())
        linear_keys = [key for key, module in entries if isinstance(module, nn.Linear)]
        if linear_keys:
            last = linear_keys[-1]
            last_index = [key for key, _ in entries].index(last)
            for index, (key, module) in enumerate(entries):
                # Entries after the classifier act on logits, dropouts regularise the logits:
                # neither belongs to the feature. Identity keeps the state_dict indices intact.
                if index >= last_index or isinstance(module, _DROPOUTS):
                    tree.replace(f"{name}.{key}", nn.Identity())
            return cast(nn.Linear, head._modules[last]).in_features
    raise ValueError(
        f"model {arch!r} has a classification head {name!r} of type {type(head).__name__} "
        "without an nn.Linear layer; only heads that are an nn.Linear or an nn.Sequential "
        "containing one are supported"
    )


def _drop_aux_heads(tree: _CopyOnWrite) -> None:
    root = tree.root
    if getattr(root, "aux_logits", False) is not True:
        return
    # googlenet / inception_v3 return a named tuple in training mode while aux_logits is set.
    vars(root)["aux_logits"] = False
    for name in _AUX_HEAD_NAMES:
        if root._modules.get(name) is not None:
            tree.replace(name, None)


def _strip_timm_head(tree: _CopyOnWrite) -> int:
    """Replace the timm classifier(s) by identities in ``tree``; return the pooled feature dim."""
    root = tree.root
    found = cast(Callable[[], Any], root.get_classifier)()
    classifiers = found if isinstance(found, (tuple, list)) else (found,)
    paths = {id(module): path for path, module in root.named_modules() if path}
    in_features: int | None = None
    for classifier in classifiers:
        if isinstance(classifier, nn.Linear) and in_features is None:
            in_features = classifier.in_features
        if (
            isinstance(classifier, nn.Module)
            and id(classifier) in paths
            and any(True for _ in classifier.parameters())
        ):
            tree.replace(paths[id(classifier)], nn.Identity())
    if in_features is not None:
        return in_features
    # Some timm models widen the feature after forward_features (e.g. mobilenetv3); their
    # pre-logit width is head_hidden_size, not num_features.
    width = getattr(root, "head_hidden_size", None)
    return int(width) if isinstance(width, int) else int(cast(int, root.num_features))


def _install_small_stem(tree: _CopyOnWrite, arch: str) -> None:
    root = tree.root
    if isinstance(root, tv_models.ResNet):
        old = cast(nn.Conv2d, root.conv1)
        conv = nn.Conv2d(
            old.in_channels,
            old.out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        tree.replace("conv1", conv)
        tree.replace("maxpool", nn.Identity())
        return
    if isinstance(root, tv_models.ConvNeXt):
        old = cast(nn.Conv2d, tree.get("features.0")._modules["0"])
        conv = nn.Conv2d(
            old.in_channels,
            old.out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=old.bias is not None,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        # Same initialisation torchvision applies to every ConvNeXt convolution.
        nn.init.trunc_normal_(conv.weight, std=0.02)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        tree.replace("features.0.0", conv)
        return
    raise ValueError(
        f"small_input_stem=True is supported for {_SMALL_STEM_FAMILIES} torchvision models, "
        f"got arch {arch!r}"
    )


class BackboneAdapter(nn.Module):
    """Pooled feature extractor built from a torchvision (or timm) classification model.

    The t-ReX recipe (Sariyildiz et al., ICLR 2023) puts an expendable projector and a cosine
    classifier on top of the backbone's pooled feature; this module provides that feature,
    ``(b, c, h, w) -> (b, d)`` with ``d = feature_dim``.

    Head removal (torchvision and other models with a ``fc``/``classifier``/``heads``/``head``
    child, looked up in this order): an ``nn.Linear`` head becomes ``nn.Identity``; in an
    ``nn.Sequential`` head the last ``nn.Linear``, everything after it and every dropout become
    ``nn.Identity`` at the same index, the rest stays (ConvNeXt's LayerNorm2d + Flatten, MaxViT's
    pre-logits, MobileNetV3's Linear + Hardswish). ``feature_dim`` is the ``in_features`` of the
    removed Linear. googlenet / inception_v3 also lose their auxiliary classifiers. timm models
    keep their structure and are run as ``forward_head(forward_features(x), pre_logits=True)``;
    their classifier is replaced by ``nn.Identity`` in the wrapped copy, and ``feature_dim`` is
    that classifier's ``in_features`` (else ``head_hidden_size``, else ``num_features``).

    Passing an instance never mutates it: only the modules on the path to each replaced child
    (the root, and e.g. ``classifier`` for a Sequential head) are shallow copies, everything else
    (submodules, ``nn.Parameter`` objects, buffers) is *shared* with the caller's model. Training
    through the adapter therefore trains the caller's backbone; ``.train()``/``.eval()`` and
    ``.to()`` on the adapter also reach the shared submodules and parameters, but not the
    removed classifier (after ``adapter.cuda()`` the caller's backbone is on the GPU while its
    classifier stays on the CPU). Use ``copy.deepcopy(model)`` first for an independent backbone.

    Args:
        model: A model name or an ``nn.Module``. Names are torchvision classification models
            (``torchvision.models.list_models(module=torchvision.models)``), built with
            ``torchvision.models.get_model(model, weights=weights, **model_kwargs)``, or
            ``"timm:<name>"``, built with ``timm.create_model(name, pretrained=weights is not
            None, **model_kwargs)`` (needs ``pip install protohead[timm]``).
        weights: Only with a name: torchvision weights (e.g. ``"DEFAULT"``); for timm any value
            other than None means pretrained. None gives random initialisation.
        small_input_stem: For 28-32 px inputs (CIFAR, Fashion-MNIST). ResNet family: ``conv1``
            becomes a fresh 3x3 stride-1 convolution (Kaiming normal, fan_out) and ``maxpool``
            an identity. ConvNeXt: the 4x4 stride-4 patchify convolution becomes a fresh 3x3
            stride-1 convolution (truncated normal, std 0.02). Both give an output stride of 8.
            The exported state_dict then loads only into a model with the same stem.
        **model_kwargs: Extra arguments for the model builder (only with a name).

    Attributes:
        feature_dim: Width ``d`` of the pooled feature, >= 1.
        arch: The name given (e.g. ``"resnet50"``, ``"timm:convnext_tiny"``) or, for an
            instance, its class name.
        model: The wrapped network with its classifier removed.

    Raises:
        TypeError: ``model`` is neither a str nor an ``nn.Module``; ``small_input_stem`` is not
            a bool; ``model_kwargs`` are given with an instance.
        ValueError: Unknown model name; ``weights`` given with an instance; no classification
            head with an ``nn.Linear`` (e.g. squeezenet); ``small_input_stem=True`` for an
            unsupported architecture (or any timm model).
        ImportError: A ``"timm:"`` name while timm is not installed.

    Example:
        >>> import torch
        >>> from protohead.backbone import BackboneAdapter
        >>> backbone = BackboneAdapter("resnet18", small_input_stem=True)
        >>> backbone.feature_dim
        512
        >>> backbone(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
        >>> sorted(backbone.export_state_dict())[:2]
        ['bn1.bias', 'bn1.num_batches_tracked']
    """

    feature_dim: int
    arch: str
    model: nn.Module

    def __init__(
        self,
        model: nn.Module | str,
        *,
        weights: str | None = None,
        small_input_stem: bool = False,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(small_input_stem, bool):
            raise TypeError(
                f"small_input_stem must be a bool, got {type(small_input_stem).__name__}"
            )
        if isinstance(model, str):
            arch = model
            network = _build_named(model, weights, model_kwargs)
        elif isinstance(model, nn.Module):
            if weights is not None:
                raise ValueError(
                    f"weights must be None when model is an nn.Module instance, got {weights!r}; "
                    "load the weights into the instance instead"
                )
            if model_kwargs:
                raise TypeError(
                    "model_kwargs are only used when model is a name, got "
                    f"{sorted(model_kwargs)} with an nn.Module instance"
                )
            arch = type(model).__name__
            network = model
        else:
            raise TypeError(
                f"model must be a model name (str) or an nn.Module, got {type(model).__name__}"
            )

        is_timm = _is_timm_model(network)
        tree = _CopyOnWrite(network)
        if small_input_stem:
            if is_timm:
                raise ValueError(
                    f"small_input_stem=True is supported for {_SMALL_STEM_FAMILIES} torchvision "
                    f"models, got timm arch {arch!r}"
                )
            _install_small_stem(tree, arch)
        if is_timm:
            feature_dim = _strip_timm_head(tree)
        else:
            feature_dim = _strip_torchvision_head(tree, arch)
            _drop_aux_heads(tree)

        self.model = tree.root
        self.arch = arch
        self.feature_dim = feature_dim
        self._timm = is_timm

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features.

        Args:
            x: Images ``(b, c, h, w)``; the size must suit the architecture (ViT and MaxViT
                need 224 px, most CNNs accept 32 px).

        Returns:
            Features ``(b, c, h, w) -> (b, d)`` with ``d = feature_dim``.

        Raises:
            ValueError: ``x`` is not 4-dimensional.
        """
        if x.dim() != 4:
            raise ValueError(f"x must have shape (b, c, h, w), got shape {tuple(x.shape)}")
        if self._timm:
            features: Tensor = cast(Callable[[Tensor], Tensor], self.model.forward_features)(x)
            head = cast(Callable[..., Tensor], self.model.forward_head)
            return head(features, pre_logits=True)
        out: Tensor = self.model(x)
        return out

    def export_state_dict(self) -> dict[str, Tensor]:
        """Backbone weights under the stock model's key names, classifier keys left out.

        ``torchvision.models.get_model(arch).load_state_dict(sd, strict=False)`` reports only
        the classifier keys as missing and nothing unexpected (for timm: the timm model's keys
        without its classifier). With ``small_input_stem=True`` the stem weights have another
        shape, so load into a model built with the same stem. Like ``state_dict()``, the tensors
        share storage with the live parameters; clone them to keep a snapshot.

        Returns:
            Mapping from stock key name to tensor.

        Example:
            >>> import torchvision
            >>> sd = BackboneAdapter("resnet18").export_state_dict()
            >>> stock = torchvision.models.get_model("resnet18")
            >>> stock.load_state_dict(sd, strict=False)
            _IncompatibleKeys(missing_keys=['fc.weight', 'fc.bias'], unexpected_keys=[])
        """
        return dict(self.model.state_dict())

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, feature_dim={self.feature_dim}"
