"""``orchestrate report``: one self-contained HTML file for a run, from the ledger.

:func:`gather` reads (the ledger, and the end of each attempt's log file); the model is built by
the pure :mod:`views.report_model` and printed by the Jinja2 template ``report.html.j2``. The
page needs no network: styles, the SVG drawings and the little script are inline.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from persistence.clock import utc_now_iso
from persistence.report_reader import RunLedger, read_run_ledger
from views.render import render
from views.report_model import Report, build_report

LOG_TAIL_BYTES = 2048
LOG_TAIL_LINES = 20


class RunNotFound(LookupError):
    """The ledger has no run of that id."""


def gather(engine: Engine, run_id: str) -> tuple[RunLedger, dict[int, str]]:
    """The run's ledger rows and the tail of every attempt's log (by attempt row id); raises
    :class:`RunNotFound`."""
    ledger = read_run_ledger(engine, run_id)
    if ledger is None:
        raise RunNotFound(run_id)
    return ledger, read_log_tails(ledger.attempts)


def read_log_tails(attempts: Iterable[dict[str, Any]]) -> dict[int, str]:
    """The last :data:`LOG_TAIL_LINES` lines (at most :data:`LOG_TAIL_BYTES`) of each attempt's
    log; an attempt whose log is gone or unreadable gets none."""
    tails: dict[int, str] = {}
    for attempt in attempts:
        path = attempt.get("log_path")
        if path:
            text = tail(Path(path))
            if text:
                tails[attempt["id"]] = text
    return tails


def tail(path: Path, max_bytes: int = LOG_TAIL_BYTES, max_lines: int = LOG_TAIL_LINES) -> str:
    """The end of the file at ``path`` as text (undecodable bytes replaced); "" if unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read(max_bytes)
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line was cut by the byte limit
    return "\n".join(lines[-max_lines:])


def report_html(engine: Engine, run_id: str) -> str:
    """The report page of ``run_id``; raises :class:`RunNotFound`."""
    ledger, tails = gather(engine, run_id)
    return render_report(build_report(ledger, tails, utc_now_iso()))


def render_report(report: Report) -> str:
    return render("report.html.j2", report=report)
