"""The package layout: wings import one way, and the 0.1 import paths still work (deprecated)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import protohead
from protohead import _legacy_paths

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "protohead"
# Modules allowed to import protohead.train: the train wing itself, and the evaluation's
# checkpoint reader, which goes through the schema module only.
TRAIN_SCHEMA = "protohead.train.checkpoint"
MULTICROP_CONFIG = "protohead.augment.config"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (``from a import b`` counts ``a`` and ``a.b``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.append(arg.value)
    return names


def _wing(module: str) -> str:
    parts = module.split(".")
    return (
        parts[1]
        if len(parts) > 1 and parts[1] in {"augment", "data", "train", "evaluation", "pretrained"}
        else ""
    )


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, wing = _module_name(path), _wing(_module_name(path))
        for name in _imports(path):
            if not name.startswith("protohead."):
                continue
            target = _wing(name)
            if target == "evaluation" and wing != "evaluation":
                bad.append(f"{module} imports {name}")
            elif target == "train" and wing != "train":
                if not (wing == "evaluation" and name.startswith(TRAIN_SCHEMA)):
                    bad.append(f"{module} imports {name}")
            elif module == "protohead":
                # The package root re-exports the augmenters and multicrop_collate for
                # `import protohead as ph`; no core block depends on a wing.
                continue
            elif target == "pretrained" and wing in {"", "augment", "data"}:
                bad.append(f"{module} imports {name}")
            elif target in {"augment", "data"} and wing == "pretrained":
                # The released weights need only the core blocks.
                bad.append(f"{module} imports {name}")
            elif (target == "data" and wing in {"", "augment"}) or (
                # A preset extends the multi-crop settings object (a leaf module); no other
                # core module depends on the augmentation wing.
                target == "augment" and wing == "" and not name.startswith(MULTICROP_CONFIG)
            ):
                bad.append(f"{module} imports {name}")
    return bad


def test_imports_flow_one_way():
    assert _violations() == []


def test_the_import_check_sees_a_planted_violation(tmp_path, monkeypatch):
    planted = PACKAGE / "augment" / "_planted_for_test.py"
    planted.write_text("from protohead.evaluation import logreg\nimport protohead.train\n")
    try:
        found = _violations()
    finally:
        planted.unlink()
    assert found == [
        "protohead.augment._planted_for_test imports protohead.evaluation",
        "protohead.augment._planted_for_test imports protohead.evaluation.logreg",
        "protohead.augment._planted_for_test imports protohead.train",
    ]


@pytest.mark.parametrize("module", ["protohead", "protohead.data", "protohead.augment"])
def test_importing_a_wing_does_not_load_train_or_evaluation(module):
    code = (
        f"import sys, {module}; "
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('protohead.')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = ast.literal_eval(out.strip())
    assert "evaluation" not in loaded and "train" not in loaded, loaded


def test_the_checkpoint_schema_does_not_load_the_trainer():
    code = (
        "import sys, protohead.train.checkpoint; "
        "print(sorted(m for m in sys.modules if m.startswith('protohead.train')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    loaded = ast.literal_eval(out.strip())
    assert "protohead.train.trainer" not in loaded and "protohead.train.loaders" not in loaded


def _old_names() -> list[tuple[str, str]]:
    pairs = []
    for old, new in sorted(_legacy_paths.MOVED_MODULES.items()):
        for name in importlib.import_module(new).__all__:
            pairs.append((old, name))
    return pairs


@pytest.mark.parametrize(("old", "name"), _old_names())
def test_old_import_paths_warn_and_return_the_same_object(old, name):
    module = importlib.import_module(old)
    new = _legacy_paths.RENAMED.get(f"{old}.{name}", f"{_legacy_paths.MOVED_MODULES[old]}.{name}")
    with pytest.warns(FutureWarning, match=rf"{old}\.{name} is deprecated .* use {new}"):
        value = getattr(module, name)
    assert value is _legacy_paths.resolve(new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("protohead.GPUMultiCrop", protohead.BatchedMultiCrop),
        ("protohead.gpu_multicrop.GPUMultiCrop", protohead.BatchedMultiCrop),
        ("protohead.transforms.multicrop_collate", protohead.multicrop_collate),
    ],
)
def test_renamed_names_warn_and_return_the_new_object(old, new):
    module_name, _, name = old.rpartition(".")
    module = importlib.import_module(module_name)
    with pytest.warns(FutureWarning, match=rf"{old} is deprecated"):
        assert getattr(module, name) is new


def test_from_import_of_an_old_path_warns():
    with pytest.warns(FutureWarning, match="protohead.optim.WarmupCosineLR is deprecated"):
        from protohead.optim import WarmupCosineLR
    from protohead.train.optim import WarmupCosineLR as new

    assert WarmupCosineLR is new


def test_unknown_names_still_raise():
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        protohead.nope  # noqa: B018
    old = importlib.import_module("protohead.transforms")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="'protohead.transforms' has no attribute 'nope'"):
            old.nope  # noqa: B018
