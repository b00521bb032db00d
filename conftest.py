"""Shared pytest setup: hypothesis profiles, and names every doctest in protohead/ may use."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from _pytest.doctest import DoctestItem
from hypothesis import settings
from torch import nn

# Property tests draw the same examples on every run (a CI failure reproduces locally) and have
# no per-example deadline (a loaded 2-core runner is slow, not wrong). HYPOTHESIS_PROFILE=explore
# draws fresh examples, for a local search.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
