"""The documentation cannot rot: its snippets run, its API reference covers the public names.

* Every ```` ```python ```` block in ``docs/**/*.md`` runs, in a fresh namespace and a temporary
  working directory. A block whose first line is ``# not executed: <reason>`` is skipped (keep
  those few: GPU-only or cluster-only code); ``# run as a script: <reason>`` runs the block with
  ``python`` in a subprocess (e.g. to spawn processes); ``# requires: <module>`` skips it when
  the optional module is missing.
* Every name in ``protohead.__all__`` is rendered by a ``::: module`` directive of an API page
  (or listed explicitly in ``docs/api/index.md``), and every documented class and function has a
  docstring with an ``Example:`` section.
* Facts copied into the guides (preset table, CLI flags, script paths, quoted error messages)
  match the code.
* ``mkdocs build --strict`` passes and renders an anchor for every exported name (skipped when the
  ``[docs]`` extra is not installed).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

import protohead

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_griffe" not in p.parts)

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", flags=re.MULTILINE | re.DOTALL)
NOT_EXECUTED = "# not executed:"
AS_SCRIPT = "# run as a script:"
REQUIRES = re.compile(r"^# requires: (\S+)[ \t]*$", flags=re.MULTILINE)
DIRECTIVE = re.compile(r"^:::[ \t]+([\w.]+)[ \t]*$", flags=re.MULTILINE)
OPTIONS = re.compile(r"(?:\n[ \t]+\S[^\n]*)*")  # the indented lines after a directive

# Documented classes/functions whose docstring still lacks an ``Example:`` doctest (other
# engineers' modules, in progress). They are xfailed, not strict, so adding an example never
# breaks the suite; once the modules settle, make the mark strict and empty this set.
KNOWN_EXAMPLE_GAPS: set[str] = set()


def _snippets() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for index, match in enumerate(FENCE.finditer(page.read_text(encoding="utf-8"))):
            found.append((f"{page.relative_to(DOCS).as_posix()}[{index}]", match.group(1)))
    return found


SNIPPETS = _snippets()
EXECUTED = [(name, code) for name, code in SNIPPETS if not code.startswith(NOT_EXECUTED)]


def _resolve(path: str) -> object:
    """Import ``a.b.c`` as a module, else as attribute ``c`` of module ``a.b``."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, attr = path.rpartition(".")
        return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Directive:
    """One ``::: target`` of an API page, with its ``members`` option (None: the whole __all__)."""

    page: str
    target: str
    members: tuple[str, ...] | None


def _members(options: str) -> tuple[str, ...] | None:
    lines = [line.strip() for line in options.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("members:"):
            value = line.removeprefix("members:").strip()
            if value:
                assert value == "false", f"members: {value} (use false or a list)"
                return ()
            listed = []
            for item in lines[index + 1 :]:
                if not item.startswith("- "):
                    break
                listed.append(item.removeprefix("- ").strip())
            return tuple(listed)
    return None


def _directives() -> list[Directive]:
    """Every ``::: target`` directive of the API pages (page: path relative to ``docs/``)."""
    found = []
    for page in sorted(API.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in DIRECTIVE.finditer(text):
            options = OPTIONS.match(text, match.end())
            members = _members(options.group(0) if options else "")
            found.append(Directive(page.relative_to(DOCS).as_posix(), match.group(1), members))
    return found


def _documented_modules() -> list[tuple[str, ModuleType]]:
    """``(page, module)`` for every ``::: module`` directive of the API pages."""
    found = []
    for directive in _directives():
        obj = _resolve(directive.target)
        if isinstance(obj, ModuleType):
            found.append((directive.page, obj))
    return found


def _rendered() -> list[tuple[str, str, object]]:
    """``(page, anchor, object)`` of every object the API pages render.

    A module directive renders the names of its ``members`` option, else of the module's
    ``__all__`` (``filters: public``), under the anchor ``module.name``; an object directive
    renders that object under its own path.
    """
    found = []
    for directive in _directives():
        obj = _resolve(directive.target)
        if isinstance(obj, ModuleType):
            names = obj.__all__ if directive.members is None else directive.members
            # A misspelt member is reported by test_api_directives_resolve_to_modules_with_all.
            names = [n for n in names if hasattr(obj, n)]
            found += [(directive.page, f"{directive.target}.{n}", getattr(obj, n)) for n in names]
        else:
            found.append((directive.page, directive.target, obj))
    return found


RENDERED = _rendered()


def _is_rendered(obj: object) -> bool:
    return any(obj is rendered for _, _, rendered in RENDERED)


def _public_callables() -> list[tuple[str, object]]:
    """Anchor and object of every class/function the API pages render."""
    seen = {
        path: obj for _, path, obj in RENDERED if inspect.isclass(obj) or inspect.isfunction(obj)
    }
    return sorted(seen.items())


# --- snippets ------------------------------------------------------------------------------


def test_docs_have_executed_snippets():
    assert len(EXECUTED) >= 15
    assert len(SNIPPETS) - len(EXECUTED) <= 5, "keep non-executed blocks to a few"


def test_skipped_snippets_say_why():
    for name, code in SNIPPETS:
        if code.startswith(NOT_EXECUTED):
            assert code.splitlines()[0][len(NOT_EXECUTED) :].strip(), f"{name}: give the reason"


def test_no_python_block_escapes_the_runner():
    # Indented fences (inside admonitions or lists) and other python-like fence names would
    # not be collected above, so they are not allowed at all.
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"^[ \t]+```", text, flags=re.MULTILINE), f"indented fence in {page}"
        other = re.findall(r"^```(py|py3|python3|pycon|ipython)\b", text, flags=re.MULTILINE)
        assert not other, f"{page}: use ```python (runs in tests), not ```{other[0]}"


@pytest.mark.parametrize(("name", "code"), EXECUTED, ids=[name for name, _ in EXECUTED])
def test_snippet_runs(name, code, tmp_path, monkeypatch):
    for module in REQUIRES.findall(code):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    if code.startswith(AS_SCRIPT):
        script = tmp_path / "snippet.py"
        script.write_text(code, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
        return
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    exec(compile(code, f"docs/{name}", "exec"), namespace)


# --- API reference -------------------------------------------------------------------------


def test_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in PAGES:
        relative = page.relative_to(DOCS).as_posix()
        assert re.search(rf":\s+{re.escape(relative)}\s*$", config, flags=re.MULTILINE), relative


def test_api_directives_resolve_to_modules_with_all():
    directives = _directives()
    assert len(directives) >= 30
    for directive in directives:
        obj = _resolve(directive.target)
        where = f"{directive.page}: {directive.target}"
        if isinstance(obj, ModuleType):
            # `filters: public` renders exactly __all__ when a module defines it.
            assert isinstance(getattr(obj, "__all__", None), list), where
            assert set(directive.members or ()) <= set(obj.__all__), (
                f"{where}: members not in __all__"
            )
        else:
            assert directive.members is None, f"{where}: members only apply to modules here"


def _explicitly_listed() -> set[str]:
    text = (API / "index.md").read_text(encoding="utf-8")
    return set(re.findall(r"`protohead\.(\w+)`", text))


@pytest.mark.parametrize("name", protohead.__all__)
def test_public_name_is_in_the_api_reference(name):
    assert _is_rendered(getattr(protohead, name)) or name in _explicitly_listed(), (
        f"protohead.{name} is not rendered by any `:::` directive under docs/api/ "
        "(nor listed in docs/api/index.md)"
    )


WINGS = sorted(f"protohead.{p.parent.name}" for p in (ROOT / "protohead").glob("*/__init__.py"))
WING_NAMES = [(wing, name) for wing in WINGS for name in importlib.import_module(wing).__all__]


@pytest.mark.parametrize(("wing", "name"), WING_NAMES, ids=[f"{w}.{n}" for w, n in WING_NAMES])
def test_wing_name_is_in_the_api_reference(wing, name):
    # `from protohead.<wing> import name` is public API: its object is rendered somewhere.
    assert _is_rendered(getattr(importlib.import_module(wing), name)), f"{wing}.{name}"


# Rendered callables without an Example: doctest, and why. The trainer's entry points train a
# network, which a doctest should not; tests/train/test_trainer.py and the packaging test run
# them instead.
NO_EXAMPLE = {
    "protohead.train.trainer.cli": "runs a training (see the packaging test)",
    "protohead.train.trainer.main": "runs a training",
    "protohead.train.loop.train_one_epoch": "needs a model, loaders and an optimiser",
    "protohead.train.loop.evaluate": "needs a model and a sharded loader",
    "protohead.train.loop.NonFiniteLossError": "raised by a diverging run; cli exits 2",
}

# Documented classes/functions whose docstring still lacks an ``Example:`` doctest (other
# engineers' modules, in progress). They are xfailed, not strict, so adding an example never
# breaks the suite; once the modules settle, make the mark strict and empty this set.
KNOWN_EXAMPLE_GAPS: set[str] = set()

CALLABLES = [(path, obj) for path, obj in _public_callables() if path not in NO_EXAMPLE]


def _has_example(obj: object) -> bool:
    doc = inspect.getdoc(obj) or ""
    return bool(re.search(r"^Examples?:\s*$", doc, flags=re.MULTILINE)) and ">>> " in doc


@pytest.mark.parametrize(
    ("path", "obj"),
    [
        pytest.param(
            path,
            obj,
            marks=pytest.mark.xfail(reason="docstring lacks an Example: doctest (known gap)")
            if path in KNOWN_EXAMPLE_GAPS
            else (),
        )
        for path, obj in CALLABLES
    ],
    ids=[path for path, _ in CALLABLES],
)
def test_public_callable_has_an_example(path, obj):
    doc = inspect.getdoc(obj) or ""
    assert re.search(r"^Examples?:\s*$", doc, flags=re.MULTILINE), f"{path} has no Example:"
    assert ">>> " in doc, f"{path}: the example must be a doctest"


def test_no_example_entries_are_current():
    rendered = dict(_public_callables())
    for path in NO_EXAMPLE:
        assert path in rendered, f"NO_EXAMPLE: {path} is not rendered any more"
        assert not _has_example(rendered[path]), (
            f"{path} has an example now: drop it from NO_EXAMPLE"
        )


def test_every_top_level_callable_has_an_example():
    # The top-level API has no known gaps: this guards it even if a page is restructured.
    for name in protohead.__all__:
        obj = getattr(protohead, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert "Example:" in (inspect.getdoc(obj) or ""), f"protohead.{name}"


# Modules of the package without a section in the API reference, and why. Modules with a
# leading underscore in their path are private and need no entry.
INTERNAL_MODULES = {
    "protohead.augment.kernels": "unchecked hot-path kernels behind protohead.augment.functional",
    "protohead.augment.image_batch": (
        "padded-batch plumbing of BatchedMultiCrop; its public helper pad_images has its own "
        "directive on augment.md"
    ),
    "protohead.train.loaders": "the trainer's DataLoaders and augmenter, built from its flags",
    "protohead.evaluation.checks": "argument checks shared by the evaluation modules",
    "protohead.evaluation.cli": (
        "the protohead-eval command; its flags are documented in transfer.md and checked by "
        "test_evaluation_cli_flags_in_docs_exist"
    ),
    "protohead.evaluation.fingerprint": "file fingerprints that key the feature cache",
    "protohead.evaluation.lbfgs": "the L-BFGS solver behind LogisticRegression",
    "protohead.evaluation.softmax": "the blocked softmax objective behind LogisticRegression",
    "protohead.evaluation.cli_args": "the protohead-eval parser; its flags are in transfer.md",
    "protohead.evaluation.sources": "how protohead-eval resolves --arch/--checkpoint/--pretrained",
}


def _package_modules() -> list[str]:
    """Dotted names of the package's modules (not packages), private ones left out."""
    names = []
    for path in sorted((ROOT / "protohead").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] != "__init__" and not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


def _covered_modules() -> dict[str, str]:
    """Module -> the API page with its section.

    A module is covered by its own ``::: module`` directive, or, below a package rendered as a
    whole (``::: protohead.evaluation``), when the package renders one of its names.
    """
    covered = {module.__name__: page for page, module in _documented_modules()}
    packages = [
        (page, module) for page, module in _documented_modules() if hasattr(module, "__path__")
    ]
    for name in _package_modules():
        for page, package in packages:
            if name in covered or not name.startswith(f"{package.__name__}."):
                continue
            module = importlib.import_module(name)
            objects = [getattr(module, n) for n in getattr(module, "__all__", [])]
            prefix = f"{package.__name__}."
            if any(
                obj is rendered
                for _, path, rendered in RENDERED
                if path.startswith(prefix) and path.count(".") == prefix.count(".")
                for obj in objects
            ):
                covered[name] = page
    return covered


def test_every_module_has_an_api_section_or_a_reason():
    covered = _covered_modules()
    missing = [m for m in _package_modules() if m not in covered and m not in INTERNAL_MODULES]
    assert not missing, (
        f"modules without a docs/api section (or an INTERNAL_MODULES reason): {missing}"
    )


def test_internal_modules_are_current():
    modules = _package_modules()
    covered = _covered_modules()
    for name, reason in INTERNAL_MODULES.items():
        assert name in modules, f"INTERNAL_MODULES: {name} does not exist"
        assert name not in covered, f"{name} has a section now: drop it from INTERNAL_MODULES"
        assert reason.strip(), name


def _wing_of(module: str) -> str:
    parts = module.split(".")
    return "protohead" if len(parts) == 2 else ".".join(parts[:2])


def test_api_index_table_matches_the_wings():
    rows = _table_rows("api/index.md", r"core, `protohead`|`protohead\.\w+`")
    wings = {
        "protohead",
        *(f"protohead.{p.parent.name}" for p in (ROOT / "protohead").glob("*/__init__.py")),
    }
    assert {row[0].split("`")[1] for row in rows} == wings
    covered = _covered_modules()
    core = [m for m in _package_modules() if _wing_of(m) == "protohead"]
    for wing_cell, page_cell, modules_cell, names_cell in (row[:4] for row in rows):
        wing = wing_cell.split("`")[1]
        page = "api/" + re.fullmatch(r"\[[^\]]+\]\(([\w.]+\.md)\)", page_cell).group(1)
        listed = {f"{wing}.{m}" for m in re.findall(r"`(\w+)`", modules_cell)}
        expected = {
            m for m in _package_modules() if _wing_of(m) == wing and m not in INTERNAL_MODULES
        }
        assert listed == expected, f"{wing}: modules column"
        for module in listed:
            assert covered.get(module) == page, f"{module} has no section on {page}"
        if wing == "protohead":
            exported = {n for n in protohead.__all__ if any(n in _resolve(m).__all__ for m in core)}
        else:
            exported = set(importlib.import_module(wing).__all__)
        names = set(re.findall(r"`(\w+)`", names_cell))
        if "…" in names_cell:  # a selection
            assert names <= exported, f"{wing}: {names - exported} are not top-level names"
        else:
            assert names == exported, f"{wing}: names column"


# The API pages of protohead 0.1 (one per module). Their URLs are linked from outside: each
# page still exists or redirects to the section that holds its module now.
API_PAGES_0_1 = [
    f"api/{name}.md"
    for name in [
        *("atomic_files", "backbone", "batched_ops", "batchnorm", "checkpoint", "class_subset"),
        *("classifier", "collate_checks", "data", "distributed", "ema", "encoder", "evaluation"),
        *("gpu_multicrop", "image_batch", "index", "launch", "memory", "model"),
        *("multicrop_params", "optim", "presets", "projector", "samplers", "seeding"),
        *("small_images", "transforms"),
    ]
]


def _redirects() -> dict[str, str]:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    block = re.search(r"^[ \t]+redirect_maps:\n((?:[ \t]+(?:#.*|\S+\.md: \S+)\n)+)", config, re.M)
    assert block is not None, "mkdocs.yml: no redirect_maps"
    return dict(re.findall(r"^[ \t]+(\S+\.md): (\S+)$", block.group(1), flags=re.M))


def test_old_api_pages_exist_or_redirect():
    redirects = _redirects()
    for page in API_PAGES_0_1:
        exists = (DOCS / page).is_file()
        assert exists != (page in redirects), (
            f"{page}: exists={exists}, redirected={page in redirects}"
        )


def test_redirects_lead_to_a_section():
    anchors: dict[str, set[str]] = {}
    for directive in _directives():
        anchors.setdefault(directive.page, set()).add(directive.target)
    for page, anchor, _ in RENDERED:
        anchors[page].add(anchor)
    for old, new in _redirects().items():
        page, _, anchor = new.partition("#")
        assert (DOCS / page).is_file(), f"{old} -> {new}: no page {page}"
        assert anchor in anchors[page], f"{old} -> {new}: {page} renders no {anchor}"


# --- the package layout page ----------------------------------------------------------------

LAYOUT = DOCS / "layout.md"


def _tree_paths(tree: str) -> set[str]:
    """Paths of an indented file tree (4 spaces a level; a trailing / marks a folder)."""
    stack: list[str] = []
    paths = set()
    for line in tree.splitlines():
        match = re.match(r"( *)(\S+)", line)
        assert match is not None and len(match.group(1)) % 4 == 0, line
        name = match.group(2)
        stack[len(match.group(1)) // 4 :] = [name.rstrip("/")]
        paths.add("/".join(stack) + ("/" if name.endswith("/") else ""))
    return paths


def test_layout_tree_is_the_package():
    # Every module of the core and of augment/, data/, train/ (the evaluation's are on its own
    # page), and nothing that does not exist.
    text = LAYOUT.read_text(encoding="utf-8")
    tree = re.search(r"^```text\n(protohead/\n.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    assert tree is not None, "docs/layout.md: no ```text tree of protohead/"
    expected = {"protohead/"}
    for path in (ROOT / "protohead").rglob("*"):
        relative = path.relative_to(ROOT)
        if path.is_dir() and (path / "__init__.py").is_file():
            expected.add(f"{relative.as_posix()}/")
        elif (
            path.suffix == ".py"
            and not path.name.startswith("_")
            and relative.parts[1] != "evaluation"
        ):
            expected.add(relative.as_posix())
    assert _tree_paths(tree.group(1)) == expected


def _section_table(text: str, heading: str) -> list[str]:
    """Table lines of the section that starts with ``heading`` (up to the next heading)."""
    start = text.index(f"{heading}\n")
    end = re.compile(r"^#", flags=re.MULTILINE).search(text, start + len(heading))
    section = text[start : end.start() if end else len(text)]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_layout_deprecation_table_is_the_changelog_one():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    expected = _section_table(changelog, "### Deprecated")
    assert len(expected) > 2, "CHANGELOG.md: no Deprecated table"
    table = _section_table(LAYOUT.read_text(encoding="utf-8"), "## Old paths (deprecated)")
    assert table == expected


# --- facts in the guides -------------------------------------------------------------------


def _table_rows(page: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


def test_concepts_preset_table_matches_presets():
    rows = _table_rows("concepts.md", r"`[\w-]+`")
    assert {row[0].strip("`") for row in rows} == set(protohead.PRESETS)
    for row in rows:
        preset = protohead.get_preset(row[0].strip("`"))
        hidden = (
            "none" if preset.projector_hidden_layers is None else preset.projector_hidden_layers
        )
        expected = [
            str(hidden),
            "linear" if preset.temperature is None else f"cosine, τ = {preset.temperature}",
            "learned" if preset.memory_size == 0 else f"OCM, {preset.memory_size}",
            f"{preset.num_global_crops} + {preset.num_local_crops}",
            f"{preset.global_crop_scale[0]:.2f}–{preset.global_crop_scale[1]:.2f}",
            "–"
            if preset.num_local_crops == 0
            else f"{preset.local_crop_scale[0]:.2f}–{preset.local_crop_scale[1]:.2f}",
        ]
        assert row[1:7] == expected, row[0]


BASH_FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", flags=re.MULTILINE | re.DOTALL)


def _commands(script: str) -> list[str]:
    """Shell commands of the docs' bash blocks that run ``script``, continuations joined."""
    commands = []
    for page in PAGES:
        for block in BASH_FENCE.findall(page.read_text(encoding="utf-8")):
            lines = block.replace("\\\n", " ").splitlines()
            commands += [line for line in lines if script in line and not line.startswith("#")]
    return commands


def test_evaluation_cli_flags_in_docs_exist():
    from protohead.evaluation.cli import build_parser

    known = {opt for action in build_parser()._actions for opt in action.option_strings}
    commands = _commands("protohead.evaluation")
    assert commands
    for command in commands:
        tail = command.split("protohead.evaluation", 1)[1]
        if tail.split()[:1] == ["plot"]:
            continue
        for flag in re.findall(r"(?<![\w-])--?[a-z][\w-]*", tail):
            assert flag in known, f"unknown flag {flag} in: {command.strip()}"


def test_referenced_scripts_exist():
    for page in PAGES:
        for path in re.findall(r"\b((?:benchmarks|examples)/[\w/]+\.py)\b", page.read_text()):
            assert (ROOT / path).is_file(), f"{page.name} references missing {path}"


TRAINER_COMMAND = re.compile(r"(?:protohead-train|-m protohead\.train)\b")


def test_trainer_flags_in_docs_exist():
    from protohead.train.args import get_args_parser

    parser = get_args_parser()
    options = {opt for action in parser._actions for opt in action.option_strings}
    presets = next(a.choices for a in parser._actions if "--preset" in a.option_strings)
    commands = [
        command
        for page in PAGES
        for block in BASH_FENCE.findall(page.read_text(encoding="utf-8"))
        for command in block.replace("\\\n", " ").splitlines()
        if TRAINER_COMMAND.search(command) and not command.startswith("#")
    ]
    assert commands
    for command in commands:
        tail = TRAINER_COMMAND.split(command, 1)[1]
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", tail):
            assert flag in options, f"unknown flag {flag} in: {command.strip()}"
        for preset in re.findall(r"--preset[ =]([\w-]+)", tail):
            assert preset in presets, f"unknown preset {preset} in: {command.strip()}"


def _tiny_vit() -> torch.nn.Module:
    import torchvision

    return torchvision.models.VisionTransformer(
        image_size=224, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    )


def _troubleshooting_triggers() -> list[tuple[str, object]]:
    """Calls that raise the errors quoted in docs/troubleshooting.md, with the quoted values."""
    from protohead.data.fashion_mnist import FashionMNIST
    from protohead.evaluation import DatasetOptions, build_dataset, log_odds

    ph = protohead
    pooled = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    missing = DatasetOptions(root="/nonexistent")

    def model() -> protohead.TReX:
        return ph.TReX("resnet18", 10, projector_hidden_dim=8, memory_size=16)

    return [
        (
            "labels-range",
            lambda: ph.PrototypeMemoryBank(4, 8, 10).update(
                torch.randn(2, 4), torch.tensor([3, 10])
            ),
        ),
        (
            "non-finite",
            lambda: ph.PrototypeMemoryBank(4, 8, 10).update(
                torch.full((1, 4), float("nan")), torch.tensor([3])
            ),
        ),
        (
            "labels-shape",
            lambda: model()([torch.randn(4, 3, 32, 32)], torch.zeros(4, 1, dtype=torch.long)),
        ),
        ("crops-batch", lambda: model()([torch.randn(4, 3, 32, 32), torch.randn(2, 3, 16, 16)])),
        (
            "collate",
            lambda: ph.multicrop_collate(
                [([torch.zeros(3, 8, 8)], 0), ([torch.zeros(3, 4, 4)], 1)]
            ),
        ),
        ("z-shape", lambda: ph.PrototypeClassifier(256, 10)(torch.randn(4, 512))),
        ("vit-size", lambda: ph.BackboneAdapter(_tiny_vit())(torch.randn(1, 3, 96, 96))),
        ("temperature", lambda: ph.PrototypeClassifier(256, 10, temperature=-1.0)),
        ("temperature-memory", lambda: ph.TReX("resnet18", 10, temperature=None)),
        ("memory-size", lambda: ph.TReX("resnet18", 10, memory_size=-1)),
        ("preset", lambda: ph.get_preset("trex_star")),
        ("model-name", lambda: ph.BackboneAdapter("resnet-50")),
        ("feature-dim", lambda: ph.TReX(pooled, 10)),
        ("small-stem", lambda: ph.BackboneAdapter("mobilenet_v3_small", small_input_stem=True)),
        ("momentum", lambda: ph.EMATeacher(torch.nn.Linear(2, 2), momentum=1.5)),
        (
            "ema-structure",
            lambda: ph.EMATeacher(torch.nn.Linear(2, 2)).update(torch.nn.Linear(3, 2)),
        ),
        ("fashion-mnist", lambda: FashionMNIST("/nonexistent/fmnist")),
        ("dtd", lambda: build_dataset("dtd", lambda image: image, missing)),
        ("sun397", lambda: build_dataset("sun397", lambda image: image, missing)),
        ("log-odds", lambda: log_odds(73.5)),
    ]


TRIGGERS = _troubleshooting_triggers()


@pytest.mark.parametrize(("case", "trigger"), TRIGGERS, ids=[case for case, _ in TRIGGERS])
def test_troubleshooting_quotes_the_real_message(case, trigger):
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    with pytest.raises(Exception) as info:  # the exception type is checked as part of the quote
        trigger()
    quoted = f"{type(info.value).__name__}: {info.value}"
    assert f"```text\n{quoted}\n```" in page, f"docs/troubleshooting.md should quote:\n{quoted}"


# --- the site itself -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="needs the [docs] extra")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        # mkdocs-material and mkdocs-redirects (>= 1.2.3) each print a notice about MkDocs 2.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return out


@pytest.mark.slow
def test_site_renders_every_exported_name(site):
    # Stronger than the static check: a name can be in __all__ and still be dropped by
    # mkdocstrings (e.g. a constant without a docstring), so look for its anchor.
    missing = []
    for page, anchor, _ in RENDERED + [(d.page, d.target, None) for d in _directives()]:
        html = (site / page.removesuffix(".md") / "index.html").read_text(encoding="utf-8")
        if f'id="{anchor}"' not in html:
            missing.append(f"{anchor} on {page}")
    assert not missing, f"not rendered: {missing}"


@pytest.mark.slow
def test_site_redirects_old_pages_keeping_their_anchors(site):
    for old, new in _redirects().items():
        html = (site / old.removesuffix(".md") / "index.html").read_text(encoding="utf-8")
        page, _, anchor = new.partition("#")
        url = f"../{Path(page).stem}/#{anchor}"
        assert f'http-equiv="refresh" content="0; url={url}"' in html, old
        # Object ids did not change, so a deep link (api/model/#protohead.model.TReX) must
        # keep its own anchor instead of appending it to the section's (docs/_hooks).
        assert f'location.href=anchor?"{url}".split("#")[0]+"#"+anchor:"{url}"' in html, old
        target = (site / page.removesuffix(".md") / "index.html").read_text(encoding="utf-8")
        assert f'id="{anchor}"' in target, new


@pytest.mark.slow
def test_site_has_no_unresolved_cross_reference(site):
    # autorefs leaves a reference to a missing anchor as plain "[`name`][protohead.x]" text
    # (no warning, so --strict passes), e.g. after a module moved to another wing.
    for page in PAGES:
        stem = page.relative_to(DOCS).with_suffix("")
        built = site / (stem.parent if stem.name == "index" else stem) / "index.html"
        unresolved = re.findall(r"\]\[(protohead[\w.]*)\]", built.read_text(encoding="utf-8"))
        assert not unresolved, f"{page.relative_to(DOCS)}: unresolved references {unresolved}"


@pytest.mark.slow
def test_site_includes_the_changelog_and_the_diagram(site):
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    first_release = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert first_release is not None
    assert first_release.group(1) in changelog
    concepts = (site / "concepts" / "index.html").read_text(encoding="utf-8")
    assert 'class="mermaid"' in concepts
