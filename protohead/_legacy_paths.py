"""Import paths of protohead 0.1 that moved in 0.2, kept alive for one minor version.

protohead 0.2 sorted the flat package into wings (:mod:`protohead.augment`,
:mod:`protohead.data`, :mod:`protohead.train`; see the "Package layout" page of the docs).
Code written against 0.1 keeps working: importing an old module path gives a stand-in module
whose attributes are the *same objects* as in their new home, and every attribute read emits
one ``FutureWarning`` that names the new path. The stand-ins are served by one import hook
from the table below instead of one shim file per old module, so the old names cannot drift
from the new ones and the package tree shows only the real layout. They go in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["MOVED_MODULES", "RENAMED", "install"]

MOVED_MODULES: dict[str, str] = {
    "protohead.transforms": "protohead.augment.multicrop",
    "protohead.gpu_multicrop": "protohead.augment.batched",
    "protohead.multicrop_params": "protohead.augment.params",
    "protohead.batched_kernels": "protohead.augment.kernels",
    "protohead.batched_ops": "protohead.augment.functional",
    "protohead.image_batch": "protohead.augment.image_batch",
    "protohead.collate_checks": "protohead.data.collate",
    "protohead.class_subset": "protohead.data.class_subset",
    "protohead.evaluation.fashion_mnist": "protohead.data.fashion_mnist",
    "protohead.evaluation.image_list": "protohead.data.image_list",
    "protohead.evaluation.errors": "protohead.data.errors",
    "protohead.checkpoint": "protohead.train.checkpoint",
    "protohead.optim": "protohead.train.optim",
    "protohead.launch": "protohead.train.launch",
    "protohead.samplers": "protohead.train.samplers",
    "protohead.seeding": "protohead.train.seeding",
    "protohead.batchnorm": "protohead.train.batchnorm",
    "protohead.small_images": "protohead.train.small_images",
}
"""Old module path -> new module path."""

RENAMED: dict[str, str] = {
    "protohead.GPUMultiCrop": "protohead.augment.BatchedMultiCrop",
    "protohead.gpu_multicrop.GPUMultiCrop": "protohead.augment.BatchedMultiCrop",
    "protohead.transforms.multicrop_collate": "protohead.data.multicrop_collate",
}
"""Old dotted names whose object lives elsewhere than ``MOVED_MODULES`` says (old -> new)."""


def resolve(new: str) -> Any:
    """The object at dotted path ``new`` (``"package.module.attr"``)."""
    module, _, attr = new.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{old} is deprecated and will be removed in protohead 0.3; use {new} instead",
        FutureWarning,
        stacklevel=stacklevel,
    )


class _MovedModule(types.ModuleType):
    """Stand-in for an old module path: forwards attribute reads to the new module, warning."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Deprecated alias of {new}.")
        self.__dict__["_protohead_new"] = new

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        old = f"{self.__name__}.{name}"
        target = RENAMED.get(old, f"{self._protohead_new}.{name}")
        try:
            value = resolve(target)
        except AttributeError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None
        warn_moved(old, target)
        return value

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self._protohead_new))


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name, MOVED_MODULES[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # nothing to run: attributes are resolved on access


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader())


def install() -> None:
    """Serve the old module paths (idempotent; called by ``import protohead``)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
