"""Loggers write to their stream by name; a stream is rotated past its size cap."""

from __future__ import annotations

import json
import logging

import structlog

from cli.logging import configure_logging
from monitoring.logfile import SafeLogFile


def test_each_logger_writes_to_its_stream_and_the_rest_to_the_runtime_log(tmp_path):
    try:
        configure_logging(tmp_path / "logs" / "runtime.jsonl")
        structlog.get_logger("orchestrate.ledger").warning("ledger_stalled", cause="disk full")
        structlog.get_logger("orchestrate.supervisor").warning("actor_hung", actor="router")
        structlog.get_logger("orchestrate.process").warning("processes survived SIGKILL")
        structlog.get_logger("orchestrate.control").info("control_listening")
    finally:
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_orchestrate", False)]:
            root.removeHandler(handler)

    def events(name: str) -> list[str]:
        return [json.loads(line)["event"] for line in (tmp_path / "logs" / name).read_text().splitlines()]

    assert events("db_operations.jsonl") == ["ledger_stalled"]
    assert events("resilience.jsonl") == ["actor_hung"]
    assert events("executor.jsonl") == ["processes survived SIGKILL"]
    assert events("runtime.jsonl") == ["control_listening"]


def test_a_stream_past_its_cap_is_rotated_keeping_two_older_files(tmp_path):
    path = tmp_path / "executor.jsonl"
    log = SafeLogFile(path, max_bytes=100, backups=2)
    for n in range(12):
        log.write(json.dumps({"n": n, "pad": "x" * 30}) + "\n")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["executor.jsonl", "executor.jsonl.1", "executor.jsonl.2"]
    kept = [json.loads(line)["n"] for name in ("executor.jsonl.2", "executor.jsonl.1", "executor.jsonl")
            for line in (tmp_path / name).read_text().splitlines()]
    assert kept == list(range(12))[-len(kept):] and len(kept) < 12  # the oldest were dropped, in order
    assert all(p.stat().st_size <= 100 + 60 for p in tmp_path.iterdir())


def test_a_shared_stream_is_closed_when_its_last_user_lets_go(tmp_path):
    from monitoring.logfile import release_log_file, shared_log_file

    first = shared_log_file(tmp_path / "s.jsonl")
    second = shared_log_file(tmp_path / "s.jsonl")
    assert first is second
    release_log_file(first)
    assert second.write("{}\n") == 3  # still held by the other user
    release_log_file(second)
    assert shared_log_file(tmp_path / "s.jsonl") is not first  # a fresh one: the old one is closed
