"""Shared pytest setup: names every doctest in protohead/ may use without importing."""

from __future__ import annotations

import tempfile

import pytest
import torch
from _pytest.doctest import DoctestItem
from torch import nn


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, object]) -> None:
    doctest_namespace["torch"] = torch
    doctest_namespace["nn"] = nn


@pytest.fixture(autouse=True)
def _doctest_temp_dir(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # Docstring examples call tempfile.mkdtemp() so they stay copyable; under pytest those
    # directories land in the item's tmp_path, which the retention policy removes, instead of
    # leaking checkpoints into the system temp dir on every run.
    if isinstance(request.node, DoctestItem):
        tmp_path = request.getfixturevalue("tmp_path")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
