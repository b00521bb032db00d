"""What users install works: the wheel trains from a fresh environment, the sdist's tests collect.

The distributions are built once, from a copy of the source tree (nothing is written into the
checkout), with ``python -m build --no-isolation`` so nothing is downloaded. The wheel goes into
a fresh virtual environment with ``--no-deps``; torch, torchvision, einops and PIL come from the
running interpreter through a ``.pth`` line. A directory added by a ``.pth`` line is not scanned
for ``.pth`` files itself, so the editable install of the development checkout (a ``.pth`` in
that directory) stays inactive there: the fresh environment imports its own copy of protohead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "protohead-train": "protohead.train.trainer:cli",
    "protohead-eval": "protohead.evaluation.cli:main",
}
# Not copied into the build tree: VCS data, environments, build outputs, caches, run outputs
# (top level only: protohead/data/ and tests/data/ are source).
TOP_LEVEL_SKIP = {".git", ".venv", "build", "dist", "runs", "output", "data", "site"}
ANYWHERE_SKIP = ("__pycache__", "*.egg-info", "*.pyc", ".*_cache", ".hypothesis")
SOURCES = ("protohead", "tests", "docs", "examples", "benchmarks", "conftest.py")
CACHE_PARTS = re.compile(r"(^|/)(__pycache__|\.hypothesis|\.\w+_cache)(/|$)|\.py[cod]$")


def _run(cmd: list[object], cwd: Path, env: dict[str, str], timeout: int = 300):
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the checkout on the import path (tests run with PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = shutil.ignore_patterns(*ANYWHERE_SKIP)(directory, names)
    if Path(directory) == ROOT:
        skipped |= TOP_LEVEL_SKIP & set(names)
    return skipped


# --- the source tree (fast) ----------------------------------------------------------------


def test_every_package_directory_is_a_regular_package():
    # setuptools would ship a directory without __init__.py as a namespace package, and
    # griffe (the API reference) would not find its modules.
    missing = [
        path.parent.relative_to(ROOT).as_posix()
        for path in (ROOT / "protohead").rglob("*.py")
        if not (path.parent / "__init__.py").is_file()
    ]
    assert not missing, f"directories without __init__.py: {sorted(set(missing))}"


def test_no_source_file_is_git_ignored():
    # A source file matched by .gitignore exists in the working tree but in no commit, so a
    # clean checkout (CI, a release) lacks it. `data/` once matched protohead/data/__init__.py.
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (e.g. an unpacked sdist)")
    ignored = []
    # Untracked files that a pattern hides, and tracked files that a pattern matches (a new
    # file next to them would be hidden).
    for which in ("--others", "--cached"):
        result = subprocess.run(
            ["git", "ls-files", which, "--ignored", "--exclude-standard", "--", *SOURCES],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        ignored += [p for p in result.stdout.splitlines() if not CACHE_PARTS.search(p)]
    assert not ignored, f"source files matched by .gitignore: {ignored}"


# --- built distributions (slow) --------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("build", reason="needs the [dev] extra (build)")
    source = tmp_path_factory.mktemp("source") / "protohead"
    shutil.copytree(ROOT, source, ignore=_ignore)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist"]
    result = _run([*cmd, "--outdir", out, source], cwd=source, env=_clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("protohead-*.whl")
    (sdist,) = out.glob("protohead-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "source": source}


@pytest.mark.slow
def test_wheel_contents(dists):
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    package = {n for n in names if n.startswith("protohead/")}
    source = {
        p.relative_to(dists["source"]).as_posix()
        for p in (dists["source"] / "protohead").rglob("*")
        if p.is_file()
    }
    assert package == source  # every module (train/*.py and the packages' __init__), py.typed
    assert "protohead/py.typed" in package
    assert {"protohead/train/trainer.py", "protohead/data/__init__.py"} <= package
    assert not [n for n in names if n.split("/")[0] in {"tests", "examples", "docs"}]
    for name, target in SCRIPTS.items():
        assert re.search(rf"^{name} = {re.escape(target)}$", scripts, flags=re.MULTILINE), name


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed, dependencies from this one."""
    root = tmp_path_factory.mktemp("venv")
    env = _clean_env()
    result = _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    python = root / "bin" / "python"
    # The wheel goes in before the .pth line exists: pip must see an empty environment (with
    # the .pth it would find the development install and could try to replace it).
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    result = _run([*pip, "install", "--no-deps", "--no-index", dists["wheel"]], root, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = _run([python, "-c", code], root, env)
    assert purelib.returncode == 0, purelib.stderr
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(purelib.stdout.strip()) / "_dependencies_from_the_dev_env.pth").write_text(
        "".join(f"{path}\n" for path in paths)
    )
    return root


def _tiny_image_folder(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label, suffix in enumerate((".png", ".jpg")):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(6):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{index}{suffix}")
    return root


@pytest.mark.slow
def test_wheel_installs_and_trains_in_a_fresh_environment(venv, tmp_path):
    python, train = venv / "bin" / "python", venv / "bin" / "protohead-train"
    env = _clean_env()
    code = "import protohead, torch; print(protohead.__file__); print(torch.__file__)"
    where = _run([python, "-c", code], tmp_path, env)
    assert where.returncode == 0, where.stderr[-3000:]
    protohead_file, torch_file = where.stdout.split()
    assert Path(protohead_file).is_relative_to(venv), protohead_file  # the wheel's copy
    assert not Path(torch_file).is_relative_to(venv)  # dependencies from the .pth line

    for cmd in ([train, "--help"], [python, "-m", "protohead.train", "--help"]):
        result = _run(cmd, tmp_path, env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "--data-dir" in result.stdout and "--preset" in result.stdout

    data, out = _tiny_image_folder(tmp_path / "images"), tmp_path / "run"
    flags = ["--data-dir", data, "--arch", "resnet18", "--small-images", "--device", "cpu"]
    flags += ["--workers", "0", "--threads", "1", "--batch-size", "4", "--epochs", "1"]
    flags += ["--max-steps-per-epoch", "1", "--projector-hidden-dim", "32", "--print-freq", "1"]
    result = _run([train, *flags, "--output-dir", out], tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "epoch 1/1" in result.stdout
    assert (out / "checkpoint.pth").is_file()
    import torchvision

    weights = torch.load(out / "backbone.pth", weights_only=True)
    loaded = torchvision.models.resnet18().load_state_dict(weights, strict=False)
    assert set(loaded.missing_keys) == {"fc.weight", "fc.bias"} and not loaded.unexpected_keys


@pytest.mark.slow
def test_sdist_tests_collect(dists, tmp_path):
    with tarfile.open(dists["sdist"]) as sdist:
        # The "data" filter (no absolute paths, links out of the tree...) exists since 3.10.12.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        sdist.extractall(tmp_path, **safe)
    (unpacked,) = tmp_path.glob("protohead-*")
    env = _clean_env(PYTHONPATH=str(unpacked))
    # Collecting the doctests of protohead/ imports it from the unpacked tree: pytest stops with
    # an import-path mismatch if another protohead (the checkout, the dev install) came first.
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    result = _run(cmd, unpacked, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert not re.search(r"\berrors?\b", output.splitlines()[-1]), output[-5000:]
    test_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    shipped = {p.relative_to(unpacked).as_posix() for p in (unpacked / "tests").rglob("test_*.py")}
    assert test_files <= shipped, f"not in the sdist: {test_files - shipped}"
    # A file may skip itself when collected from an sdist (tests of repository-only files).
    collected = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    assert len(collected) > len(test_files) // 2, result.stdout[-3000:]
