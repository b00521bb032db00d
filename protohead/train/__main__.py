"""``python -m protohead.train``: the t-ReX trainer (same as the ``protohead-train`` command)."""

from protohead.train.trainer import cli

raise SystemExit(cli())
