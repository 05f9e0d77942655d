"""Missions through the real runtime: planned, run, approved over the socket, and receipted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from control.client import ControlClient
from tests.conftest import ORCHESTRATE, ROOT, link_project_venv, wait_until


def receipt_of(tmp_path: Path) -> dict:
    receipts = sorted((tmp_path / ".state" / "receipts").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(receipts[-1].read_text())


def quickstart_project(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(ROOT / "examples" / "quickstart" / "project", target,
                    ignore=shutil.ignore_patterns("out", "__pycache__", ".orchestrate-report.xml"))
    link_project_venv(target)  # the project's own virtualenv (with pytest) runs its tests
    return target


def test_run_tests_really_runs_the_projects_tests_and_the_receipt_reports_them(tmp_path, orchestrate):
    target = quickstart_project(tmp_path)
    result = orchestrate("run", "--mission", "run_tests", "--param", f"target={target}")
    assert result.code == 0, result.out + result.err
    document = receipt_of(tmp_path)
    steps = {step["id"]: step for step in document["content"]["steps"]}
    assert [s["state"] for s in steps.values()] == ["completed", "completed", "completed"]
    assert steps["report"]["result"] == {"tests": 3, "passed": 3, "failures": 0, "errors": 0, "skipped": 0}
    assert document["content"]["lineage"]["workflow_hash"] and document["ids"]["run_id"]
    assert "passed\": 3" in result.out


def test_a_failing_test_halts_the_workflow_deterministically_and_receipts_repeat(tmp_path, orchestrate):
    target = quickstart_project(tmp_path)
    (target / "tests" / "test_broken.py").write_text("def test_broken():\n    assert 1 == 2\n")
    first = orchestrate("run", "--mission", "run_tests", "--param", f"target={target}")
    assert first.code == 1
    one = receipt_of(tmp_path)
    second = orchestrate("run", "--mission", "run_tests", "--param", f"target={target}", "--new")
    assert second.code == 1
    two = receipt_of(tmp_path)
    assert one["content"]["status"] == "failed" and one["content"]["halted_at"] == "execute"
    assert [s["state"] for s in one["content"]["steps"]] == ["completed", "failed", "blocked"]
    assert one["receipt_hash"] == two["receipt_hash"]
    assert one["ids"]["run_id"] != two["ids"]["run_id"]


def test_unknown_missions_and_envelope_limits_are_refused_before_running(tmp_path, orchestrate):
    unknown = orchestrate("run", "--mission", "world_peace")
    assert unknown.code == 2 and "daily_loop, run_tests" in unknown.err
    strict = orchestrate("plan", "--mission", "daily_loop", "--param", "checks=10", "--param", "strict=true")
    assert strict.code == 2 and "Traceback" not in strict.err
    assert not (tmp_path / ".state" / "orchestration.db").exists()
    truncated = orchestrate("plan", "--mission", "daily_loop", "--param", "checks=10", "-o", "wf.json")
    assert truncated.code == 0 and "truncated" in truncated.out
    assert len(json.loads((tmp_path / "wf.json").read_text())["tasks"]) == 5


def test_daily_loop_waits_for_a_person_and_the_receipt_names_who_approved(tmp_path):
    project = quickstart_project(tmp_path)
    process = subprocess.Popen(
        [sys.executable, str(ORCHESTRATE), "run", "--mission", "daily_loop", "--param", f"project={project}",
         "--param", "focus=ship the parser"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        socket_path = tmp_path / ".state" / "orchestrate.sock"
        wait_until(socket_path.exists, what="the control socket")
        with ControlClient(socket_path) as control:
            def waiting():
                runs = control.request("status")["runs"]
                return runs and runs[0]["awaiting_approval"] and runs[0]
            run = wait_until(waiting, what="the approval step")
            assert "ship the parser" in run["awaiting_approval"][0]["prompt"]
            control.request("approve", {"run": run["run_id"], "task": run["awaiting_approval"][0]["task"],
                                        "comment": "priorities confirmed"})
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    human = next(s for s in receipt_of(tmp_path)["content"]["steps"] if s["kind"] == "human")
    assert human["decision"] == "approved" and human["by"] and human["comment"] == "priorities confirmed"
