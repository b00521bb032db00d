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


TRAINER = re.compile(r"(?:protohead-train|-m protohead\.train)\b")
EVALUATION = re.compile(r"(?:protohead-eval|-m protohead\.evaluation)\b")
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def _commands() -> list[str]:
    """Shell commands of the README (bash blocks, continuations joined; inline code spans) and
    the trainer command behind ``make demo``, whose flags the README describes."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        commands += block.replace("\\\n", " ").splitlines()
    commands += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    makefile = (README.parent / "Makefile").read_text().replace("\\\n", " ")
    demo = re.search(r"^DEMO_FLAGS \?=(.*)$", makefile, flags=re.MULTILINE)
    assert demo is not None, "Makefile: no DEMO_FLAGS"
    commands.append(f"protohead-train {demo.group(1)}")
    return [c for c in commands if not c.lstrip().startswith("#")]


def test_readme_commands_use_existing_flags():
    from protohead.evaluation.cli import build_parser
    from protohead.train.args import get_args_parser

    for command_name, parser in ((TRAINER, get_args_parser()), (EVALUATION, build_parser())):
        options = {opt for action in parser._actions for opt in action.option_strings}
        commands = [c for c in _commands() if command_name.search(c)]
        assert commands, command_name.pattern
        for command in commands:
            tail = command_name.split(command, 1)[1]
            for flag in FLAG.findall(tail):
                assert flag in options, f"unknown flag {flag} in README: {command.strip()}"
            for preset in re.findall(r"--preset[ =]([\w-]+)", tail):
                choices = next(a.choices for a in parser._actions if "--preset" in a.option_strings)
                assert preset in choices, f"unknown preset {preset} in README: {command.strip()}"


def test_readme_names_the_shipped_commands():
    # The console scripts the wheel installs (pyproject [project.scripts]) are the documented ones.
    pyproject = (README.parent / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", pyproject, re.M | re.S)
    assert section is not None, "pyproject.toml: no [project.scripts]"
    scripts = re.findall(r"^([\w-]+) = ", section.group(1), flags=re.MULTILINE)
    assert set(scripts) == {"protohead-train", "protohead-eval"}
    text = README.read_text()
    for name in scripts:
        assert f"`{name}`" in text, name
