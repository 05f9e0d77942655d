"""Metrics: the design's families, computed by one fold (domain/metrics.py) from a live
runtime's committed facts (served at /metrics) or from a recorded run (`orchestrate metrics`)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from control.client import ControlClient
from domain.metrics import MetricsTally, tally_from_records
from monitoring.exposition import MetricsAddressInvalid, MetricsView, exposition_text, parse_address, registry_of
from tests.conftest import ORCHESTRATE, ROOT, ledger, link_project_venv, wait_until

TEN = ("requests_created", "requests_validated", "validation_errors", "tasks_executed", "task_success_rate",
       "task_duration_seconds", "retry_attempts", "circuit_breaker_state", "acceptance_test_pass_rate",
       "db_write_duration_seconds")


def families(text: str) -> dict:
    """Parsed exposition text, by family name (counters without their ``_total``)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family, sample_name: str | None = None, **labels: str) -> float:
    """The sum of the family's samples named ``sample_name`` (default: the family's own) whose
    labels include ``labels``."""
    wanted = sample_name or (family.name + "_total" if family.type == "counter" else family.name)
    return sum(s.value for s in family.samples
               if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items()))


# -- the fold, pure ----------------------------------------------------------------------------
def test_the_fold_counts_attempts_by_tool_and_outcome_retries_gates_and_circuits():
    tally = MetricsTally()
    tally.adapter_known("shell")
    tally.attempt_started(("r", "w/a", 1), "shell")
    tally.attempt_validating(("r", "w/a", 1))
    tally.attempt_finished(("r", "w/a", 1), "FAILED", 0.2, "gate")
    tally.attempt_started(("r", "w/a", 2), "shell")
    tally.attempt_validating(("r", "w/a", 2))
    tally.attempt_finished(("r", "w/a", 2), "COMPLETED", 3.0, None)
    tally.attempt_started(("r", "w/b", 1), "python")
    tally.attempt_finished(("r", "w/b", 1), "TIMEOUT", 60.0, "timeout")
    tally.event("CIRCUIT_OPEN", {"adapter": "shell"})
    tally.event("CIRCUIT_HALF_OPEN", {"adapter": "python"})
    tally.event("ACTOR_RESTARTED", {"actor": "executor:shell"})
    assert tally.executed == {("shell", "failed"): 1, ("shell", "completed"): 1, ("python", "timeout"): 1}
    assert tally.retries == 1
    assert (tally.gates_passed, tally.gates_failed, tally.acceptance_test_pass_rate) == (1, 1, 0.5)
    assert tally.task_success_rate == pytest.approx(1 / 3)
    assert tally.circuits == {"shell": 2, "python": 1}
    assert tally.actor_restarts == {"executor:shell": 1}
    assert tally.task_duration.count == 3 and tally.task_duration.total == pytest.approx(63.2)
    # 0.2 s falls in the 0.25 bucket, 3 s in 5, 60 s in 60.
    cumulative = dict(tally.task_duration.cumulative())
    assert (cumulative[0.1], cumulative[0.25], cumulative[5.0], cumulative[60.0]) == (0, 1, 2, 3)


def test_agent_usage_events_feed_the_token_and_cost_families():
    tally = MetricsTally()
    tally.event("AGENT_USAGE", {"adapter": "aider", "tokens_in": 1200, "tokens_out": 300, "cost_usd": 0.02})
    tally.event("AGENT_USAGE", {"adapter": "aider", "tokens_in": 800})
    tally.event("AGENT_USAGE", {"tokens_in": 5})  # no adapter: not counted
    assert tally.agent_tokens == {("aider", "in"): 2000, ("aider", "out"): 300}
    assert tally.agent_cost_usd == {"aider": pytest.approx(0.02)}


def test_rates_are_nan_before_anything_finished_not_a_made_up_number():
    tally = MetricsTally()
    assert math.isnan(tally.task_success_rate) and math.isnan(tally.acceptance_test_pass_rate)


def test_a_recorded_run_folds_to_the_same_tally_as_the_live_facts():
    live = MetricsTally()
    live.adapter_known("shell")
    live.attempt_started(("r", "w/a", 1), "shell")
    live.attempt_validating(("r", "w/a", 1))
    live.attempt_finished(("r", "w/a", 1), "COMPLETED", 0.5, None)
    live.attempt_started(("r", "w/b", 1), "shell")
    live.attempt_finished(("r", "w/b", 1), "FAILED", 0.1, "command_failed")
    live.attempt_started(("r", "w/b", 2), "shell")  # still running: counted as a retry, not executed
    live.event("RUN_CREATED", {})
    tasks = [{"task_key": "w/a", "adapter": "shell", "spec": {"acceptance": [{"command": "true"}]}},
             {"task_key": "w/b", "adapter": "shell", "spec": {}}]
    attempts = [
        {"run_id": "r", "step_name": "w/a", "attempt": 1, "adapter": "shell", "status": "COMPLETED",
         "duration_s": 0.5, "error_class": None},
        {"run_id": "r", "step_name": "w/b", "attempt": 1, "adapter": "shell", "status": "FAILED",
         "duration_s": 0.1, "error_class": "command_failed"},
        {"run_id": "r", "step_name": "w/b", "attempt": 2, "adapter": "shell", "status": "IN_PROGRESS",
         "duration_s": None, "error_class": None},
    ]
    recorded = tally_from_records(tasks, attempts, [{"event_type": "RUN_CREATED", "payload": None}])
    for name in ("executed", "retries", "circuits", "gates_passed", "gates_failed", "requests_created"):
        assert getattr(recorded, name) == getattr(live, name), name
    assert recorded.task_duration.counts == live.task_duration.counts


def test_the_exposition_has_every_family_and_a_label_on_every_sample():
    tally = MetricsTally()
    tally.attempt_started(("r", "w/a", 1), "shell")
    tally.attempt_finished(("r", "w/a", 1), "COMPLETED", 0.01, None)
    tally.commit_took(0.002)
    text = exposition_text(registry_of(lambda: MetricsView(tally, queue_depth=3, running=2, labels={"run_id": "r"})))
    parsed = families(text)
    assert set(TEN) | {"task_queue_depth", "tasks_running", "actor_restarts"} <= set(parsed)
    assert value(parsed["tasks_executed"], tool="shell", outcome="completed") == 1
    assert value(parsed["db_write_duration_seconds"], "db_write_duration_seconds_count") == 1
    assert value(parsed["task_queue_depth"]) == 3 and value(parsed["tasks_running"]) == 2
    assert all(sample.labels.get("run_id") == "r" for family in parsed.values() for sample in family.samples)


@pytest.mark.parametrize(("text", "address"), [("9464", ("127.0.0.1", 9464)), ("0.0.0.0:80", ("0.0.0.0", 80)),
                                                ("[::1]:9000", ("::1", 9000)), ("localhost:1", ("localhost", 1))])
def test_metrics_addresses(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "abc", "host.example:99", "127.0.0.1:70000", "127.0.0.1:"])
def test_bad_metrics_addresses_are_refused_naming_what_is_expected(text):
    with pytest.raises(MetricsAddressInvalid, match="PORT"):
        parse_address(text)


# -- a recorded run ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart, run once: its directory and run id."""
    where = tmp_path_factory.mktemp("metrics") / "quickstart"
    shutil.copytree(ROOT / "examples" / "quickstart", where, ignore=shutil.ignore_patterns(".state", "__pycache__"))
    link_project_venv(where)  # in the checkout, the quickstart finds the checkout's .venv (with pytest)
    result = subprocess.run([sys.executable, str(ORCHESTRATE), "run", "plan", "-q"], cwd=where,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return where, ledger(where).execute("select run_id from runs").fetchone()[0]


def test_after_the_quickstart_metrics_has_all_ten_families_counting_every_attempt(quickstart, orchestrate):
    where, run_id = quickstart
    result = orchestrate("metrics", cwd=where)
    assert result.code == 0, result.err
    parsed = families(result.out)
    assert set(TEN) <= set(parsed), sorted(parsed)
    finished = ledger(where).execute(
        "select count(*) from step_attempts where status in ('COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED')"
    ).fetchone()[0]
    assert finished >= 12
    assert value(parsed["tasks_executed"]) == finished
    assert value(parsed["tasks_executed"], outcome="completed") == finished
    assert value(parsed["task_duration_seconds"], "task_duration_seconds_count") == finished
    assert value(parsed["requests_created"]) == 1 and value(parsed["requests_validated"]) == 1
    assert value(parsed["task_success_rate"]) == 1.0
    # tests/unit and feature/implement have gates, and they passed.
    assert value(parsed["acceptance_test_pass_rate"]) == 1.0
    assert {s.labels["adapter"]: s.value for s in parsed["circuit_breaker_state"].samples} == {"shell": 0, "python": 0}
    assert value(parsed["db_write_duration_seconds"], "db_write_duration_seconds_count") > 0
    assert {s.labels["run_id"] for family in parsed.values() for s in family.samples} == {run_id}


def test_metrics_of_a_named_run_to_a_textfile_collector_file(quickstart, orchestrate, tmp_path):
    where, run_id = quickstart
    target = tmp_path / "orchestrate.prom"
    assert orchestrate("metrics", "--run", run_id, "-o", str(target), cwd=where).code == 0
    assert target.read_text() == orchestrate("metrics", cwd=where).out
    assert not list(tmp_path.glob(".*.tmp"))


def test_metrics_of_an_unknown_run_or_an_empty_ledger_is_a_clear_error(quickstart, orchestrate, tmp_path):
    where, _ = quickstart
    unknown = orchestrate("metrics", "--run", "run-nope", cwd=where)
    assert unknown.code == 2 and "no run 'run-nope'" in unknown.err and "Traceback" not in unknown.err
    empty = orchestrate("metrics")
    assert empty.code == 2 and "no runs in the ledger yet" in empty.err


def test_the_four_log_streams_and_per_task_event_logs_are_json_lines(quickstart):
    where, run_id = quickstart
    logs = where / ".state" / "logs"
    for stream in ("executor.jsonl", "resilience.jsonl", "request_builder.jsonl", "db_operations.jsonl"):
        for line in (logs / stream).read_text().splitlines():
            json.loads(line)
    executor = [json.loads(line) for line in (logs / "executor.jsonl").read_text().splitlines()]
    finished = [e for e in executor if e["event"] == "attempt_finished" and e["run_id"] == run_id]
    assert len(finished) == ledger(where).execute("select count(*) from step_attempts").fetchone()[0]
    created = [json.loads(line) for line in (logs / "request_builder.jsonl").read_text().splitlines()]
    assert any(e["event"] == "run_created" and e["run_id"] == run_id for e in created)
    assert any(json.loads(line)["event"] == "commit" for line in (logs / "db_operations.jsonl").read_text().splitlines())
    unit = [json.loads(line) for line in (logs / run_id / "tests" / "unit.events.jsonl").read_text().splitlines()]
    assert [e["state"] for e in unit if e["event"] == "task_state"] == ["QUEUED", "IN_PROGRESS", "VALIDATING",
                                                                       "COMPLETED"]
    assert (logs / run_id / "tests" / "unit.log").exists()


# -- a live runtime ------------------------------------------------------------------------------
def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return families(response.read().decode())


def test_a_live_runtime_serves_metrics_that_change_as_tasks_finish(tmp_path, orchestrate):
    """Two human steps hold the run open; each approval lets more tasks finish."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": [
        {"id": "first", "tool": "shell", "command": "true"},
        {"id": "gate1", "tool": "human", "prompt": "go on?", "depends_on": ["first"]},
        {"id": "second", "tool": "shell", "command": "true", "depends_on": ["gate1"]},
        {"id": "gate2", "tool": "human", "prompt": "finish?", "depends_on": ["second"]}]}))
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan), "--metrics", "127.0.0.1:0"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("orchestrate: metrics at http://127.0.0.1:"), line + process.stderr.read()
        url = line.split(" at ", 1)[1].strip()
        socket_path = tmp_path / ".state" / "orchestrate.sock"

        def awaiting(task: str) -> str | None:
            with ControlClient(socket_path) as client:
                for run in client.request("status")["runs"]:
                    if any(w["task"] == task for w in run["awaiting_approval"]):
                        return run["run_id"]
            return None

        run_id = wait_until(lambda: socket_path.exists() and awaiting("w/gate1"), timeout=60, what="gate1 to wait")
        before = wait_until(lambda: (m := scrape(url)) and value(m["tasks_executed"]) == 1 and m, timeout=30,
                            what="the first task to be counted")
        assert value(before["tasks_running"]) == 1  # the human step, awaiting approval
        assert value(before["requests_created"]) == 1
        assert orchestrate("approve", run_id, "w/gate1").code == 0
        wait_until(lambda: awaiting("w/gate2"), timeout=60, what="gate2 to wait")
        after = wait_until(lambda: (m := scrape(url)) and value(m["tasks_executed"]) == 3 and m, timeout=30,
                           what="gate1 and the second task to be counted")
        assert value(after["tasks_executed"], tool="human", outcome="completed") == 1
        assert value(after["task_duration_seconds"], "task_duration_seconds_count") == 3
        assert value(after["db_write_duration_seconds"], "db_write_duration_seconds_count") > \
            value(before["db_write_duration_seconds"], "db_write_duration_seconds_count")
        assert orchestrate("approve", run_id, "w/gate2").code == 0
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(OSError):
        scrape(url)  # the endpoint ends with the runtime


def test_a_busy_metrics_port_is_refused_with_exit_2_and_nothing_runs(tmp_path, orchestrate):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "touch ran"}]}))
        result = orchestrate("run", str(plan), "--metrics", f"127.0.0.1:{holder.getsockname()[1]}")
    finally:
        holder.close()
    assert result.code == 2 and "cannot serve metrics" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "ran").exists()
    bad = orchestrate("run", str(plan), "--metrics", "nine")
    assert bad.code == 2 and "expected PORT or HOST:PORT" in bad.err
    assert not Path(tmp_path / "ran").exists()


def test_serve_counts_plans_it_refuses_and_runs_it_creates(tmp_path, orchestrate):
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "serve", "--metrics", "0"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("orchestrate: metrics at http://127.0.0.1:"), line + process.stderr.read()
        url = line.split(" at ", 1)[1].strip()
        wait_until(lambda: (tmp_path / ".state" / "orchestrate.sock").exists(), what="the socket")
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"id": "w", "tasks": [{"id": "t", "tool": "shell"}]}))  # no command
        refused = wait_until(lambda: (r := orchestrate("submit", str(bad))).code != 3 and r, what="an answer")
        assert refused.code == 2
        good = tmp_path / "good.json"
        good.write_text(json.dumps({"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]}))
        assert orchestrate("submit", str(good)).code == 0
        metrics = wait_until(lambda: (m := scrape(url)) and value(m["tasks_executed"]) == 1 and m, what="the run")
        assert value(metrics["validation_errors"]) == 1
        assert value(metrics["requests_created"]) == 1 and value(metrics["requests_validated"]) == 1
        assert orchestrate("shutdown").code == 0
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    refusals = [json.loads(line) for line in (tmp_path / ".state" / "logs" / "request_builder.jsonl").read_text()
                .splitlines()]
    assert [r["plan"] for r in refusals if r["event"] == "plan_refused"] == [str(bad)]


def test_a_reused_result_counts_as_cached_not_executed():
    live = MetricsTally()
    live.attempt_started(("r", "w/a", 1), "cache")
    live.attempt_finished(("r", "w/a", 1), "COMPLETED", 0.0, None, cached=True)
    live.attempt_started(("r", "w/b", 1), "shell")
    live.attempt_finished(("r", "w/b", 1), "COMPLETED", 0.3, None)
    recorded = tally_from_records(
        [{"task_key": "w/a", "adapter": "cache"}, {"task_key": "w/b", "adapter": "shell"}],
        [{"run_id": "r", "step_name": "w/a", "attempt": 1, "adapter": "cache", "status": "COMPLETED",
          "duration_s": 0.0, "error_class": None, "cached_from": "r0/w/a/1"},
         {"run_id": "r", "step_name": "w/b", "attempt": 1, "adapter": "shell", "status": "COMPLETED",
          "duration_s": 0.3, "error_class": None, "cached_from": None}], [])
    for tally in (live, recorded):
        assert tally.cached == 1 and tally.executed == {("shell", "completed"): 1}
        assert tally.task_duration.count == 1
