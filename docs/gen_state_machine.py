"""Regenerate the transition tables in docs/state_machine.md from domain/states.py.

    python docs/gen_state_machine.py

The prose stays as written; each table between a "| from | to |" header and the next blank
line is replaced. tests/test_states.py fails when the document and the code disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domain.states import RUN_TRANSITIONS, TASK_TRANSITIONS, WORKSTREAM_TRANSITIONS  # noqa: E402


def rows(table: dict) -> list[str]:
    lines = ["| from | to |", "|---|---|"]
    for source, targets in table.items():
        ordered = sorted(targets, key=list(type(source)).index)
        cell = ", ".join(f"`{t.value}`" for t in ordered) or "— (final)"
        lines.append(f"| `{source.value}` | {cell} |")
    return lines


def main() -> None:
    path = ROOT / "docs" / "state_machine.md"
    lines = path.read_text().splitlines()
    tables = iter([RUN_TRANSITIONS, WORKSTREAM_TRANSITIONS, TASK_TRANSITIONS])
    out: list[str] = []
    index = 0
    while index < len(lines):
        if lines[index] == "| from | to |":
            out += rows(next(tables))
            while index < len(lines) and lines[index].startswith("|"):
                index += 1
            continue
        out.append(lines[index])
        index += 1
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
