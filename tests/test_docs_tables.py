"""Tables in the README that quote a generated report hold to it: a rerun of the grid that changes
experiments/future/REPORT.md must change the README too."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def number(cell: str) -> str:
    return re.sub(r"[^0-9.]", "", cell.split()[0] if cell else "")


def test_the_future_lines_table_quotes_the_generated_report():
    readme = table_rows((ROOT / "README.md").read_text(), "| run | test accuracy |")
    report = table_rows((ROOT / "experiments/future/REPORT.md").read_text(), "| experiment | run | model |")
    reported = {(number(row[3]), row[6]) for row in report}  # (accuracy, s per epoch)
    assert len(readme) == len(report), f"the README lists {len(readme)} runs, the report {len(report)}"
    for row in readme:
        pair = (number(row[1]), row[3])
        assert pair in reported, f"README row {row[0]}: {pair} is not a (accuracy, s per epoch) of the report"
