"""The run report as data: what each part of the page shows, computed from the ledger's rows.

Pure: :func:`build_report` takes a :class:`persistence.report_reader.RunLedger` and the log
tails already read, and returns plain dicts and lists (geometry included) that the template
only prints. Nothing here reads a file, a clock or the database, so every number on the page
is tested by feeding rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.graph import CycleError
from domain.layout import Layout, assign_lanes, layered_layout
from domain.shown import (
    CACHED,
    is_allowed_failure,
    outcome_text,
    shown_state,
    stored_state,
    task_shown_state,
)
from persistence.report_reader import RunLedger

# The order states are listed in (legends, counts): how far along a task is, then how it ended.
# Tasks are shown by their shown state (domain.shown): reused results and allowed failures apart.
STATE_ORDER = ("PENDING", "QUEUED", "RETRY_WAIT", "IN_PROGRESS", "VALIDATING", "AWAITING_APPROVAL",
               "COMPLETED", CACHED, "FAILED", shown_state("FAILED", allowed=True), "TIMEOUT",
               shown_state("TIMEOUT", allowed=True), "BLOCKED", "CANCELLED")
# A workstream with a task in one of these (stored) states opens by itself in the report.
_PROBLEMS = frozenset({"FAILED", "TIMEOUT", "BLOCKED", "CANCELLED"})
TIMELINE_WIDTH = 1100.0
LANE_HEIGHT = 16.0
LANE_LABEL_WIDTH = 150.0
AXIS_HEIGHT = 22.0
LABEL_CHARS = 24


@dataclass(frozen=True, slots=True)
class Report:
    """Everything the report template prints, in the order it prints it."""

    summary: dict[str, Any]
    workstream_graph: dict[str, Any]
    task_graph: dict[str, Any]
    timeline: dict[str, Any]
    workstreams: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    routing: list[dict[str, Any]]
    breakers: list[dict[str, Any]]
    patches: list[dict[str, Any]]
    events: list[dict[str, Any]]
    audit: dict[str, Any] | None


def build_report(ledger: RunLedger, log_tails: Mapping[int, str], generated_at: str) -> Report:
    """The report of ``ledger``'s run; ``log_tails`` maps an attempt's row id to the end of its
    log (attempts without one show none)."""
    task_ids = {task["task_key"]: f"t{index}" for index, task in enumerate(ledger.tasks)}
    return Report(
        summary=summary(ledger, generated_at),
        workstream_graph=workstream_graph(ledger.workstreams),
        task_graph=task_graph(ledger.tasks, ledger.workstreams, task_ids),
        timeline=timeline(ledger.attempts, task_ids, allowed_attempts(ledger.tasks, ledger.attempts)),
        workstreams=workstream_sections(ledger, log_tails, task_ids),
        errors=sorted(ledger.errors, key=lambda e: (-int(e.get("count") or 1), e["signature"])),
        routing=ledger.routing,
        breakers=[_event_row(e) for e in ledger.breaker_events],
        patches=[p | {"files": _files(p.get("files"))} for p in ledger.patches],
        events=[_event_row(e) for e in ledger.events],
        audit=audit_table(ledger.audit),
    )


# -- summary --------------------------------------------------------------------------------------
def summary(ledger: RunLedger, generated_at: str) -> dict[str, Any]:
    run = ledger.run
    counts = Counter(task_shown_state(task) for task in ledger.tasks)
    attempts = ledger.attempts
    return {
        "run_id": run["run_id"],
        "status": run["status"],
        "reason": run.get("status_reason") or "",
        "created_at": run["created_at"],
        "updated_at": run["updated_at"],
        "elapsed": format_seconds(seconds_between(run["created_at"], run["updated_at"])),
        "plan_source": run.get("plan_source") or "",
        "tasks": len(ledger.tasks),
        "workstreams": len(ledger.workstreams),
        "attempts": len(attempts),
        "retried": sum(1 for task in ledger.tasks if int(task.get("attempts") or 0) > 1),
        "counts": ordered_counts(counts),
        "outcome": outcome_text(counts),
        "errors": sum(int(e.get("count") or 1) for e in ledger.errors),
        "generated_at": generated_at,
    }


def ordered_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """``counts`` as (state, n) pairs in :data:`STATE_ORDER`, unknown states last by name."""
    rank = {state: index for index, state in enumerate(STATE_ORDER)}
    return sorted(((s, n) for s, n in counts.items() if n), key=lambda p: (rank.get(p[0], len(rank)), p[0]))


# -- graphs ---------------------------------------------------------------------------------------
def workstream_graph(workstreams: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The workstreams as a DAG, each coloured by its status."""
    order = [ws["ws_id"] for ws in workstreams]
    deps = {ws["ws_id"]: list(ws.get("depends_on") or ()) for ws in workstreams}
    status = {ws["ws_id"]: ws["status"] for ws in workstreams}
    layout = _layout(order, deps, deps)
    nodes = [_node(p, state=status[p.key], label=p.key, anchor=f"ws-{i}", tip=f"{p.key}: {status[p.key]}")
             for i, p in enumerate(layout.nodes)]
    return _graph(layout, nodes)


def task_graph(tasks: Sequence[dict[str, Any]], workstreams: Sequence[dict[str, Any]],
               task_ids: Mapping[str, str]) -> dict[str, Any]:
    """Every task as a node coloured by its state, laid out by all its prerequisites (its own
    ``depends_on`` and every task of the workstreams its workstream depends on); the arrows are
    its own ``depends_on`` only (the workstream graph shows the rest)."""
    order = [task["task_key"] for task in tasks]
    by_ws: dict[str, list[str]] = {}
    for task in tasks:
        by_ws.setdefault(task["ws_id"], []).append(task["task_key"])
    ws_deps = {ws["ws_id"]: [d for d in ws.get("depends_on") or () if d != ws["ws_id"]] for ws in workstreams}
    own = {task["task_key"]: list(_spec(task).get("depends_on") or ()) for task in tasks}
    every = {
        key: own[key] + [d for dep_ws in ws_deps.get(task["ws_id"], ()) for d in by_ws.get(dep_ws, ())]
        for key, task in zip(order, tasks, strict=True)
    }
    layout = _layout(order, every, own)
    state = {task["task_key"]: task_shown_state(task) for task in tasks}
    nodes = [_node(p, state=state[p.key], label=p.key, anchor=task_ids[p.key], tip=f"{p.key}: {state[p.key]}")
             for p in layout.nodes]
    return _graph(layout, nodes)


def _layout(order: list[str], deps: Mapping[str, Iterable[str]], drawn: Mapping[str, Iterable[str]]) -> Layout:
    try:
        return layered_layout(order, deps, edges_of=drawn)
    except CycleError:
        # A recorded plan was validated, so this is a damaged ledger: draw it flat rather than fail.
        return layered_layout(order, {}, edges_of=drawn)


def _node(placed: Any, *, state: str, label: str, anchor: str, tip: str) -> dict[str, Any]:
    return {"key": placed.key, "x": placed.x, "y": placed.y, "w": placed.width, "h": placed.height, "state": state,
            "label": shorten(label, LABEL_CHARS), "anchor": anchor, "tip": tip}


def _graph(layout: Layout, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    box = {p.key: p for p in layout.nodes}
    # One path for every arrow: a thousand separate elements would make the page slower to draw.
    segments = []
    for source, target in layout.edges:
        a, b = box[source], box[target]
        x1, y1 = a.x + a.width, a.y + a.height / 2
        x2, y2 = b.x, b.y + b.height / 2
        middle = (x1 + x2) / 2
        segments.append(f"M{x1:.0f} {y1:.0f}C{middle:.0f} {y1:.0f} {middle:.0f} {y2:.0f} {x2:.0f} {y2:.0f}")
    return {"width": round(layout.width), "height": round(layout.height), "nodes": nodes,
            "edges": "".join(segments), "edge_count": len(layout.edges), "layers": layout.layers}


# -- timeline -------------------------------------------------------------------------------------
def timeline(attempts: Sequence[dict[str, Any]], task_ids: Mapping[str, str],
             allowed: Collection[int] = frozenset()) -> dict[str, Any]:
    """Attempts as bars on a time axis, one row per slot of each adapter (the lanes an adapter
    needed at once). An attempt still running (no end) is drawn up to the latest known time.
    ``allowed``: the row ids of attempts whose failure was allowed (see :func:`allowed_attempts`)."""
    timed = [(a, parse_time(a["started_at"]), parse_time(a.get("completed_at"))) for a in attempts]
    timed = [(a, start, end) for a, start, end in timed if start is not None]
    if not timed:
        return {"width": TIMELINE_WIDTH, "height": AXIS_HEIGHT, "lanes": [], "bars": [], "ticks": [], "span": "0s"}
    origin = min(start for _, start, _ in timed)
    latest = max(max(start, end or start) for _, start, end in timed)
    span = max(latest - origin, 1e-3)
    scale = (TIMELINE_WIDTH - LANE_LABEL_WIDTH - 10) / span

    by_adapter: dict[str, list[int]] = {}
    for index, (attempt, _, _) in enumerate(timed):
        by_adapter.setdefault(attempt.get("adapter") or "?", []).append(index)
    lanes: list[dict[str, Any]] = []
    bars: list[dict[str, Any]] = []
    for adapter in sorted(by_adapter):
        members = by_adapter[adapter]
        intervals = [(timed[i][1], timed[i][2] if timed[i][2] is not None else latest) for i in members]
        lane_of = assign_lanes(intervals)
        first = len(lanes)
        for lane in range(max(lane_of) + 1):
            lanes.append({"label": f"{adapter} #{lane + 1}", "y": AXIS_HEIGHT + (first + lane) * LANE_HEIGHT})
        for index, lane, (start, end) in zip(members, lane_of, intervals, strict=True):
            attempt = timed[index][0]
            x = LANE_LABEL_WIDTH + (start - origin) * scale
            duration = attempt.get("duration_s")
            state = shown_state(attempt["status"], attempt["id"] in allowed)
            bars.append({
                "x": round(x, 1),
                "y": AXIS_HEIGHT + (first + lane) * LANE_HEIGHT + 2,
                "w": round(max((end - start) * scale, 1.0), 1),
                "state": state,
                "anchor": task_ids.get(attempt["step_name"], ""),
                "tip": f"{attempt['step_name']} #{attempt['attempt']} {state}"
                       + (f" {format_seconds(duration)}" if duration is not None else ""),
            })
    ticks = [{"x": round(LANE_LABEL_WIDTH + span * i / 5 * scale, 1), "label": format_seconds(span * i / 5),
              "anchor": "start" if i == 0 else "end" if i == 5 else "middle"} for i in range(6)]
    return {"width": TIMELINE_WIDTH, "height": AXIS_HEIGHT + len(lanes) * LANE_HEIGHT + 4, "lanes": lanes,
            "bars": bars, "ticks": ticks, "span": format_seconds(span)}


# -- per workstream and task ----------------------------------------------------------------------
def workstream_sections(ledger: RunLedger, log_tails: Mapping[int, str],
                        task_ids: Mapping[str, str]) -> list[dict[str, Any]]:
    """One collapsible section per workstream, its tasks in key order (each in its shown state,
    see :mod:`domain.shown`) with every attempt."""
    allowed = allowed_attempts(ledger.tasks, ledger.attempts)
    attempts: dict[str, list[dict[str, Any]]] = {}
    for attempt in ledger.attempts:
        row = attempt_row(attempt, log_tails.get(attempt["id"], ""), attempt["id"] in allowed)
        attempts.setdefault(attempt["step_name"], []).append(row)
    tasks: dict[str, list[dict[str, Any]]] = {}
    for task in ledger.tasks:
        tasks.setdefault(task["ws_id"], []).append(task_row(task, attempts.get(task["task_key"], []), task_ids))
    sections = []
    for ws in ledger.workstreams:
        members = tasks.get(ws["ws_id"], [])
        counts = Counter(task["state"] for task in members)
        sections.append({
            "id": ws["ws_id"], "title": ws.get("title") or "", "status": ws["status"],
            "depends_on": list(ws.get("depends_on") or ()), "counts": ordered_counts(counts),
            "tasks": members,
            # A workstream with a problem (an allowed failure too: worth a look) opens by itself.
            "open": any(stored_state(state) in _PROBLEMS for state in counts),
        })
    return sections


def task_row(task: dict[str, Any], attempts: list[dict[str, Any]], task_ids: Mapping[str, str]) -> dict[str, Any]:
    spec = _spec(task)
    last = attempts[-1] if attempts else {}
    return {
        "key": task["task_key"], "anchor": task_ids[task["task_key"]], "state": task_shown_state(task),
        "tool": task.get("tool") or "", "adapter": task.get("adapter") or "",
        "attempts": attempts, "exit_code": task.get("exit_code"),
        "duration": last.get("duration", ""), "error_class": task.get("error_class") or "",
        "what": spec.get("command") or spec.get("callable") or spec.get("prompt") or "",
        "depends_on": list(spec.get("depends_on") or ()),
    }


def allowed_attempts(tasks: Sequence[dict[str, Any]], attempts: Sequence[dict[str, Any]]) -> frozenset[int]:
    """The row ids of the attempts whose failure the plan allowed: the last attempt of each task
    shown as an allowed failure (failures before it were retried, as without ``allow_failure``)."""
    allowed = {task["task_key"] for task in tasks if is_allowed_failure(task_shown_state(task))}
    last = {attempt["step_name"]: attempt["id"] for attempt in attempts if attempt["step_name"] in allowed}
    return frozenset(last.values())


def attempt_row(attempt: dict[str, Any], log_tail: str, allowed: bool = False) -> dict[str, Any]:
    """An attempt as a row of its task's table; ``allowed``: its failure was allowed."""
    return {
        "attempt": attempt["attempt"], "status": shown_state(attempt["status"], allowed),
        "adapter": attempt.get("adapter") or "",
        "pid": attempt.get("pid"), "started_at": attempt["started_at"],
        "completed_at": attempt.get("completed_at") or "", "exit_code": attempt.get("exit_code"),
        "duration": format_seconds(attempt.get("duration_s")), "rss": format_bytes(attempt.get("max_rss_bytes")),
        "cpu": format_seconds(attempt.get("cpu_s")), "error_class": attempt.get("error_class") or "",
        "message": attempt.get("message") or "", "gate_output": attempt.get("gate_output") or "",
        "log_path": attempt.get("log_path") or "", "log_tail": log_tail, "usage": usage_text(attempt),
    }


def usage_text(attempt: dict[str, Any]) -> str:
    """What an agent attempt used, as its tool reported it: ``1,200 tokens in, 300 out,
    $0.0048``; "" for an attempt that reported nothing."""
    tokens_in, tokens_out, cost = attempt.get("tokens_in"), attempt.get("tokens_out"), attempt.get("cost_usd")
    parts = []
    if tokens_in is not None or tokens_out is not None:
        parts.append(f"{tokens_in or 0:,} tokens in, {tokens_out or 0:,} out")
    if cost is not None:
        parts.append(f"${cost:.4g}")
    return ", ".join(parts)


def audit_table(rows: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The audit trail as a table (``None``: the ledger has no audit table). Columns are those of
    the rows, in their order; values that are not text are shown as compact JSON."""
    if rows is None:
        return None
    columns = list(rows[0]) if rows else []
    return {"columns": columns, "rows": [[_cell(row.get(c)) for c in columns] for row in rows]}


# -- formatting -----------------------------------------------------------------------------------
def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an ISO-8601 timestamp; ``None`` for none or unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def seconds_between(start: str | None, end: str | None) -> float | None:
    a, b = parse_time(start), parse_time(end)
    return None if a is None or b is None else max(0.0, b - a)


def format_seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.2f}s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def format_bytes(value: int | None) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _spec(task: dict[str, Any]) -> dict[str, Any]:
    spec = task.get("spec")
    return spec if isinstance(spec, dict) else {}


def _files(value: Any) -> list[str]:
    if isinstance(value, list):
        return [f"{item.get('status', '')} {item.get('path', '')}".strip() if isinstance(item, dict) else str(item)
                for item in value]
    return [str(value)] if value else []


def _event_row(event: dict[str, Any]) -> dict[str, Any]:
    payload = event.get("payload")
    return {"at": event["timestamp"], "type": event["event_type"], "task": event.get("task_key") or "",
            "detail": _cell(payload) if payload is not None else ""}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "; ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    return str(value)
