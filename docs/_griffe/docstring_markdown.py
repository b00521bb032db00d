"""Griffe extension for the docs build: Sphinx-isms in protohead's docstrings, made Markdown.

* A Google-style ``Example:`` section is read as ``Examples:``. protohead's docstrings use the
  singular heading (the doctests run under pytest); griffe only knows the plural as an examples
  section and would otherwise render the singular as an admonition whose ``>>>`` lines are
  parsed as Markdown.
* Sphinx roles such as ``:class:`~protohead.Projector``` become code spans (``Projector``), so
  they do not show up as ``:class:`` followed by a code span.

Only the documentation build uses this; the library's docstrings are untouched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^Example:[ \t]*$", flags=re.MULTILINE)
_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):`(~?)([^`<]+?)(?:\s*<([^>`]+)>)?`")


def _code_span(match: re.Match[str]) -> str:
    short, text, target = match.group(1), match.group(2).strip(), match.group(3)
    if target is not None:  # :class:`text <target>`
        return f"`{text}`"
    return f"`{text.rsplit('.', 1)[-1]}`" if short else f"`{text}`"


class DocstringMarkdown(griffe.Extension):
    """Rewrite every loaded docstring before it is parsed."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _SINGULAR.sub("Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_code_span, text)
