"""One table of every figure a ``benchmarks/gpu_check.sh`` log holds.

``gpu_check.sh`` runs several benchmarks, each printing its own table under a ``## title``
line. This reads the log and prints them as one markdown table, a row per measured row, with
the step it came from, so the whole GPU check can be pasted as one table::

    python benchmarks/gpu_summary.py gpu_check.log
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

# gpu_check_train.py prints fixed-width rows: "run  batch  ms/step  img/s  [ratio]".
_STEP_ROW = re.compile(r"^(?P<run>\S.*?)\s{2,}(?P<batch>\d+)\s+(?P<ms>[\d.]+)\s+(?P<ips>\d+)")


def summary_rows(log: str) -> list[tuple[str, str]]:
    """``(section, row)`` pairs: markdown table rows and fixed-width step rows per section.

    Example:
        >>> log = "## a\\n| size | ms |\\n|---|---|\\n| 8192 | 0.1 |\\n"
        >>> log += "## b\\ntrex   128   90.1   1420\\n"
        >>> summary_rows(log)  # doctest: +NORMALIZE_WHITESPACE
        [('a', '**size | ms**'), ('a', '8192 | 0.1'),
         ('b', 'trex: batch 128, 90.1 ms/step, 1420 img/s')]
    """
    rows: list[tuple[str, str]] = []
    section = "setup"
    header_next = False
    for line in log.splitlines():
        if line.startswith("## "):
            section, header_next = line[3:].strip(), True
            continue
        if line.startswith("|"):
            cells = line.strip().strip("|").strip()
            if set(cells) <= set("-|: "):
                continue  # the separator under a header
            if header_next or cells.startswith(("size |", "source |", "measurement |")):
                header_next = False
                rows.append((section, f"**{cells}**"))
                continue
            rows.append((section, cells))
        elif (match := _STEP_ROW.match(line)) and not line.startswith(("run ", "(")):
            rows.append(
                (
                    section,
                    f"{match['run']}: batch {match['batch']}, {match['ms']} ms/step, "
                    f"{match['ips']} img/s",
                )
            )
        elif line.startswith("FAILED"):
            rows.append((section, line))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", type=Path, help="the output of benchmarks/gpu_check.sh")
    args = parser.parse_args()
    print("## Summary\n\n| step | figures |\n|---|---|")
    for section, row in summary_rows(args.log.read_text(errors="replace")):
        print(f"| {section} | {row.replace('|', '/')} |")


if __name__ == "__main__":
    main()
