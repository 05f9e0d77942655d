"""The run report as data (views/report_model.py) from hand-made ledger rows, and its reading
(persistence/report_reader.py, views/report.py) from a real SQLite ledger."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from persistence.migrate import open_db
from persistence.report_reader import RunLedger, read_audit
from views.report import render_report, tail
from views.report_model import build_report, format_bytes, format_seconds, timeline

T0 = "2026-12-05T10:00:00.000000Z"


def _task(key: str, state: str, deps=(), attempts=1, **extra) -> dict:
    ws = key.split("/")[0]
    return {"task_key": key, "ws_id": ws, "state": state, "tool": "shell", "adapter": "shell", "attempts": attempts,
            "exit_code": extra.get("exit_code"), "error_class": extra.get("error_class"),
            "spec": {"command": extra.get("command", "true"), "depends_on": list(deps)}}


def _attempt(row_id: int, key: str, n: int, status: str, start: float, end: float | None, **extra) -> dict:
    def at(seconds: float) -> str:
        return f"2026-12-05T10:00:{seconds:09.6f}Z"

    return {"id": row_id, "step_name": key, "attempt": n, "status": status, "adapter": extra.get("adapter", "shell"),
            "pid": 100 + row_id, "started_at": at(start), "completed_at": at(end) if end is not None else None,
            "exit_code": extra.get("exit_code", 0), "duration_s": None if end is None else end - start,
            "max_rss_bytes": 3 * 1024 * 1024, "cpu_s": 0.01, "error_class": extra.get("error_class"),
            "message": extra.get("message"), "gate_output": extra.get("gate_output"),
            "log_path": f"/logs/{key}.{n}.log"}


def sample_ledger(audit=None) -> RunLedger:
    tasks = [_task("build/compile", "COMPLETED"),
             _task("build/test", "FAILED", deps=["build/compile"], attempts=2, exit_code=1, error_class="gate"),
             _task("ship/deploy", "BLOCKED")]
    attempts = [_attempt(1, "build/compile", 1, "COMPLETED", 0, 1),
                _attempt(2, "build/test", 1, "FAILED", 1, 2, exit_code=1, error_class="gate",
                         gate_output="FAILED tests/test_x.py::test_y - <b>assert</b>"),
                _attempt(3, "build/test", 2, "FAILED", 1.5, 3, exit_code=1, error_class="gate")]
    return RunLedger(
        run={"run_id": "run-1", "status": "partial", "status_reason": "1 failed", "created_at": T0,
             "updated_at": "2026-12-05T10:01:05.000000Z", "plan_source": "plan.json"},
        workstreams=[{"ws_id": "build", "status": "failed", "depends_on": [], "title": "Build"},
                     {"ws_id": "ship", "status": "blocked", "depends_on": ["build"], "title": ""}],
        tasks=tasks, attempts=attempts,
        errors=[{"signature": "exit code N", "error_code": "gate", "step_name": "build/test", "count": 2,
                 "first_seen_at": T0, "last_seen_at": T0},
                {"signature": "rare", "error_code": "crash", "step_name": "build/test", "count": 1,
                 "first_seen_at": T0, "last_seen_at": T0}],
        events=[], breaker_events=[{"timestamp": T0, "event_type": "CIRCUIT_OPEN", "task_key": None,
                                    "payload": {"adapter": "shell", "state": "open"}}],
        routing=[], patches=[{"task_key": "build/compile", "attempt": 1, "base_commit": "a" * 40, "head_commit": "b" * 40,
                              "files": [{"status": "M", "path": "x.py"}], "patch_sha256": "c" * 64, "patch_path": "p"}],
        audit=audit,
    )


def test_the_summary_counts_what_the_ledger_holds():
    report = build_report(sample_ledger(), {}, "now")
    s = report.summary
    assert (s["tasks"], s["workstreams"], s["attempts"], s["retried"], s["errors"]) == (3, 2, 3, 1, 3)
    assert s["counts"] == [("COMPLETED", 1), ("FAILED", 1), ("BLOCKED", 1)]
    assert s["elapsed"] == "1m05s"


def test_graphs_colour_each_node_by_its_state_and_draw_its_own_dependencies():
    report = build_report(sample_ledger(), {}, "now")
    nodes = {n["key"]: n for n in report.task_graph["nodes"]}
    assert {k: n["state"] for k, n in nodes.items()} == {
        "build/compile": "COMPLETED", "build/test": "FAILED", "ship/deploy": "BLOCKED"}
    assert report.task_graph["edge_count"] == 1
    # ship/deploy has no own dependency but follows every task of build: it is laid out after them.
    assert nodes["ship/deploy"]["x"] > nodes["build/test"]["x"] > nodes["build/compile"]["x"]
    ws = {n["key"]: n["state"] for n in report.workstream_graph["nodes"]}
    assert ws == {"build": "failed", "ship": "blocked"}


def test_the_timeline_puts_overlapping_attempts_of_an_adapter_in_separate_slots():
    report = build_report(sample_ledger(), {}, "now")
    lanes = [lane["label"] for lane in report.timeline["lanes"]]
    assert lanes == ["shell #1", "shell #2"]
    bars = report.timeline["bars"]
    assert len(bars) == 3 and len({(b["y"], b["x"]) for b in bars}) == 3
    assert all(b["w"] >= 1 for b in bars)
    assert timeline([], {})["bars"] == []


def test_an_attempt_still_running_is_drawn_up_to_the_latest_known_time():
    attempts = [_attempt(1, "a/x", 1, "COMPLETED", 0, 4), _attempt(2, "a/y", 1, "IN_PROGRESS", 2, None)]
    bars = timeline(attempts, {"a/x": "t0", "a/y": "t1"})["bars"]
    assert bars[1]["x"] + bars[1]["w"] == bars[0]["x"] + bars[0]["w"]


def test_sections_open_only_where_something_went_wrong_and_carry_every_attempt():
    report = build_report(sample_ledger(), {2: "last line of the log"}, "now")
    build, ship = report.workstreams
    assert (build["open"], ship["open"]) == (True, True)
    test_task = build["tasks"][1]
    assert [a["attempt"] for a in test_task["attempts"]] == [1, 2]
    assert test_task["attempts"][0]["log_tail"] == "last line of the log"
    assert test_task["attempts"][0]["rss"] == "3.0 MiB"


def test_errors_come_most_frequent_first_and_the_audit_trail_shows_its_own_columns():
    report = build_report(sample_ledger(audit=[{"id": 1, "command": "approve", "args": {"task": "x"}}]), {}, "now")
    assert [e["signature"] for e in report.errors] == ["exit code N", "rare"]
    assert report.audit == {"columns": ["id", "command", "args"], "rows": [["1", "approve", "task=x"]]}
    assert build_report(sample_ledger(), {}, "now").audit is None


def test_the_page_escapes_what_tasks_printed_and_needs_no_network(tmp_path):
    html = render_report(build_report(sample_ledger(), {2: "<script>alert(1)</script>"}, "now"))
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;assert&lt;/b&gt;" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert html.count('<details class="task"') == 3
    assert "this ledger has no audit table" in html


def test_formats():
    assert (format_seconds(None), format_seconds(0.5), format_seconds(3725)) == ("", "0.50s", "1h02m05s")
    assert (format_bytes(None), format_bytes(10), format_bytes(5 << 30)) == ("", "10 B", "5.0 GiB")


def test_a_log_tail_is_its_last_whole_lines_and_an_unreadable_log_gives_none(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(1000)) + b"\xff end")
    text = tail(log, max_bytes=100, max_lines=3)
    assert text.splitlines() == ["line 998", "line 999", "\ufffd end"]
    assert tail(tmp_path / "missing.log") == ""


def test_the_audit_trail_is_read_when_the_ledger_has_the_table(tmp_path: Path):
    engine, _ = open_db(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        assert read_audit(engine, "run-1") == []  # the ledger has the table (migration 0006), no row yet
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO audit_log (at, uid, user, via, command, args_json, run_id, accepted, message) VALUES "
                "('t2', 0, 'root', 'web', 'approve', '{\"task\": \"w/t\"}', 'run-1', 1, '{}'), "
                "('t1', 0, 'root', 'socket', 'pause', '{}', 'run-2', 1, '{}')"))
        assert read_audit(engine, "run-1") == [{
            "id": 1, "at": "t2", "uid": 0, "user": "root", "via": "web", "command": "approve",
            "args": {"task": "w/t"}, "run_id": "run-1", "accepted": 1, "message": "{}"}]
        assert len(read_audit(engine)) == 2
        with engine.begin() as connection:  # a ledger from before the audit trail still reports
            connection.execute(text("DROP TABLE audit_log"))
        assert read_audit(engine, "run-1") is None
    finally:
        engine.dispose()
