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


# Doctests that read a dataset installed on the machine, and where it must be. A bare machine
# (CI without the Debian package dataset-fashion-mnist) skips them with the reason instead of
# failing; the code paths they show are tested on fabricated files in tests/data/.
DATA_DOCTESTS = {
    "protohead.data.fashion_mnist.FashionMNIST": (
        "/usr/share/datasets/fashion-mnist",
        "dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
    ),
}


@pytest.fixture(autouse=True)
def _skip_doctests_without_data(request: pytest.FixtureRequest) -> None:
    if isinstance(request.node, DoctestItem) and request.node.name in DATA_DOCTESTS:
        root, reason = DATA_DOCTESTS[request.node.name]
        if not os.path.isdir(root):
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _doctest_temp_dir(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # Docstring examples call tempfile.mkdtemp() so they stay copyable; under pytest those
    # directories land in the item's tmp_path, which the retention policy removes, instead of
    # leaking checkpoints into the system temp dir on every run.
    if isinstance(request.node, DoctestItem):
        tmp_path = request.getfixturevalue("tmp_path")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
