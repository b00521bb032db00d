"""What the commands share (internal): usage errors as one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 2.

    argparse prints the whole usage block before its error, fifty lines for ``protohead-train``,
    which buries the one line that says what was wrong; ``--help`` still shows the usage.

    Example:
        >>> parser = OneLineParser(prog="tool")
        >>> _ = parser.add_argument("--mode", choices=["a", "b"])
        >>> parser.parse_args(["--mode", "c"])  # doctest: +SKIP
        tool: error: argument --mode: invalid choice: 'c' (choose from 'a', 'b')
    """

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # wrapped library messages become one line
        self.exit(2, f"{self.prog}: error: {text}\n")
