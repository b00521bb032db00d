"""Train t-ReX / t-ReX* with protohead: a thin wrapper around the installed trainer.

The trainer ships in the package (``protohead.train``); this file only keeps the old command
``python examples/train_trex.py ...`` working. Prefer ``protohead-train ...`` or
``python -m protohead.train ...`` (same flags: ``protohead-train --help``).
"""

from protohead.train.trainer import cli

if __name__ == "__main__":
    raise SystemExit(cli())
