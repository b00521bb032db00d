"""``python -m protohead.evaluation``: see :mod:`protohead.evaluation.cli`."""

from protohead.evaluation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
