"""torch.hub entry points (hubconf.py at the repository root), loaded from the local checkout."""

from __future__ import annotations

import ast
import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision

from protohead.pretrained import PRETRAINED, list_pretrained

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "hubconf.py").is_file():  # e.g. tests run from an sdist, which has no hubconf
    pytest.skip("hubconf.py lives in the repository only", allow_module_level=True)
REPO = str(ROOT)

pytestmark = pytest.mark.filterwarnings("ignore:no recorded SHA-256:UserWarning")


@pytest.fixture(scope="module")
def released_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(11)
    stock = torchvision.models.resnet50().state_dict()
    state = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in stock.items() if not k.startswith("fc.")}  # fmt: skip
    path = tmp_path_factory.mktemp("hub") / "trexstar.pth"
    torch.save(state, path)
    return path, state


def _hubconf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_entry_point_per_registry_name() -> None:
    hubconf = _hubconf()
    # torch.hub.list's rule (it only reads GitHub repositories): public callables of hubconf.
    entries = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")]
    assert sorted(entries) == sorted(list_pretrained())
    for name, info in PRETRAINED.items():
        doc = inspect.getdoc(getattr(hubconf, name)) or ""
        assert f"IN1K top-1 {info.imagenet_top1}" in doc and "CC BY-NC-SA 4.0" in doc, name
        assert f"{info.transfer_log_odds:.4f}" in doc, name
    assert all(importlib.util.find_spec(dep) for dep in hubconf.dependencies)


def test_pretrained_false_gives_an_untrained_resnet50(
    released_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    _, state = released_file
    model = torch.hub.load(REPO, "trex_resnet50", source="local", pretrained=False)
    assert type(model) is torchvision.models.ResNet and model.fc.out_features == 1000
    assert not torch.equal(model.conv1.weight, state["conv1.weight"])
    with pytest.raises(ValueError, match="weights_source goes with pretrained=True"):
        torch.hub.load(REPO, "trex_resnet50", source="local", pretrained=False, weights_source="x")
    with pytest.raises(TypeError, match="pretrained must be a bool, got str"):
        torch.hub.load(REPO, "trex_resnet50", source="local", pretrained="yes")


def test_pretrained_entry_loads_the_released_file(
    released_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, state = released_file
    model = torch.hub.load(
        REPO, "trex_star_resnet50", source="local", weights_source=path.as_uri(), progress=False
    )
    loaded = model.state_dict()
    assert set(loaded) - set(state) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_the_package_does_not_need_hubconf() -> None:
    # The wheel holds protohead/ only (pyproject: packages.find include = protohead*); no
    # module of the package may import the repository-root hubconf.
    for path in (ROOT / "protohead").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                assert all(a.name != "hubconf" for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert node.module != "hubconf", path
