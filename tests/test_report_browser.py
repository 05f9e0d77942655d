"""The report of a real 1,000-task run, opened in a real Chromium (see tests/browser.py).

Acceptance: the page loads (navigation start to the load event, as the browser measures it) in
under 2 s and shows every task, the task graph and the timeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import screenshot
from tests.conftest import ORCHESTRATE, ledger

WORKSTREAMS = 10
TASKS_PER_WORKSTREAM = 100
LOAD_BUDGET_MS = 2000


def thousand_task_plan() -> dict:
    """Ten workstreams of 100 tasks in chains of ten (each task after the one ten before it);
    the last workstream waits for the first; one task fails twice (retried once), blocking its
    chain."""
    workstreams = []
    for w in range(WORKSTREAMS):
        tasks = []
        for t in range(TASKS_PER_WORKSTREAM):
            task = {"id": f"t{t:03d}", "tool": "shell", "command": "true"}
            if t >= 10:
                task["depends_on"] = [f"t{t - 10:03d}"]
            tasks.append(task)
        workstreams.append({"id": f"w{w}", "tasks": tasks, **({"depends_on": ["w0"]} if w == WORKSTREAMS - 1 else {})})
    broken = workstreams[3]["tasks"][5]
    broken.update(command="echo 'E   AssertionError: 2 != 3' >&2; exit 1", max_attempts=2,
                  retry={"backoff_s": 0.05})
    return {"workstreams": workstreams}


@pytest.fixture(scope="module")
def thousand_task_report(tmp_path_factory) -> tuple[Path, str, Path]:
    """A real 1,000-task run and its report: (directory, run id, report file)."""
    directory = tmp_path_factory.mktemp("thousand")
    (directory / "plan.json").write_text(json.dumps(thousand_task_plan()))
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}

    def orchestrate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ORCHESTRATE), *args], cwd=directory, env=env,
                              capture_output=True, text=True, timeout=600, check=False)

    ran = orchestrate("run", "plan.json", "--quiet")
    assert ran.returncode == 1, ran.stdout + ran.stderr  # the broken task fails its run
    with ledger(directory) as db:
        run_id = db.execute("SELECT run_id FROM runs").fetchone()[0]
    made = orchestrate("report", run_id, "-o", "report.html")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("wrote report.html (")
    return directory, run_id, directory / "report.html"


def test_the_report_of_a_1000_task_run_loads_in_chromium_within_2s_and_shows_every_task(
        thousand_task_report, browser_context):
    directory, run_id, report = thousand_task_report
    page = browser_context.new_page()
    page.goto(report.as_uri(), wait_until="load")
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    print(f"report of {WORKSTREAMS * TASKS_PER_WORKSTREAM} tasks: {load_ms:.0f} ms from navigation to load")
    assert 0 < load_ms < LOAD_BUDGET_MS, f"the report took {load_ms:.0f} ms from navigation to load"
    screenshot(page, "report-1000-tasks")

    with ledger(directory) as db:
        keys = [row[0] for row in db.execute("SELECT task_key FROM tasks WHERE run_id = ?", (run_id,))]
        attempts = db.execute("SELECT count(*) FROM step_attempts WHERE run_id = ?", (run_id,)).fetchone()[0]
    assert len(keys) == WORKSTREAMS * TASKS_PER_WORKSTREAM
    in_sections = page.eval_on_selector_all("details.task", "els => els.map(e => e.dataset.task)")
    in_graph = page.eval_on_selector_all("#task-graph g.node", "els => els.map(e => e.dataset.key)")
    assert sorted(in_sections) == sorted(keys)
    assert sorted(in_graph) == sorted(keys)
    # Drawn, not just present: every node and every attempt's bar has a box on the canvas.
    assert page.evaluate("[...document.querySelectorAll('#task-graph rect')].every(r => r.getBBox().width > 0)")
    assert page.eval_on_selector_all("#timeline rect.bar", "els => els.filter(e => e.getBBox().width > 0).length") \
        == attempts
    assert page.evaluate("document.getElementById('task-graph').getBoundingClientRect().height") > 100
    assert page.evaluate("document.getElementById('timeline').getBoundingClientRect().height") > 20

    # The failure explains itself: its two attempts, the error's count, its log's last line.
    page.click("#task-graph g.node[data-key='w3/t005'] a")
    section = page.locator("details.task[data-task='w3/t005']")
    assert section.get_attribute("open") is not None
    text = section.inner_text()
    assert "2 attempts" in text and "AssertionError: 2 != 3" in text
    assert page.locator("#errors").inner_text().count("w3/t005") == 1
    assert "BLOCKED" in page.locator("details.ws#ws-3 > summary").inner_text()
