"""The README's Python snippets run as written, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"readme_snippet_{index}"}
    exec(compile(SNIPPETS[index], f"README.md[python {index}]", "exec"), namespace)
    if "backbone.pth" in SNIPPETS[index]:
        import torch
        import torchvision

        stock = torchvision.models.resnet18()
        result = stock.load_state_dict(torch.load(tmp_path / "backbone.pth"), strict=False)
        assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
        assert not result.unexpected_keys
