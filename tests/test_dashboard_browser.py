"""The web dashboard in a real browser, during a real run (see tests/browser.py).

Each test starts `orchestrate run PLAN --ui 127.0.0.1:0` as a process, opens its dashboard in
Chromium and checks the outcome in the ledger the runtime committed.
"""

from __future__ import annotations

import json
import os
import pwd
import urllib.error
import urllib.request
from pathlib import Path

from tests.browser import Runtime, screenshot
from tests.conftest import ledger

LIVE_PLAN = {"workstreams": [
    {"id": "build", "title": "Build and test", "tasks": [
        {"id": "compile", "tool": "shell", "command": "echo compiling; while [ ! -e go ]; do sleep 0.05; done; echo compiled"},
        {"id": "unit", "tool": "shell", "command": "echo 3 passed", "depends_on": ["compile"]},
        {"id": "lint", "tool": "shell", "command": "echo clean", "depends_on": ["compile"]}]},
    {"id": "release", "depends_on": ["build"], "tasks": [
        {"id": "sign-off", "tool": "human", "prompt": "Ship version 1.2?"},
        {"id": "publish", "tool": "shell", "command": "echo published", "depends_on": ["sign-off"]}]},
]}
WAIT_MS = 60_000


def _write_plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(LIVE_PLAN))
    return path


def _state_in_page(page, task: str) -> str:
    return page.locator(f'#tasks tr[data-task="{task}"]').get_attribute("data-state") or ""


def _post(base: str, body: dict, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/api/command", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_dashboard_follows_a_live_run_and_its_approve_button_finishes_it(tmp_path, browser_context):
    runtime = Runtime(tmp_path, "run", str(_write_plan(tmp_path)))
    try:
        page = browser_context.new_page()
        # As a person would: the printed address (the runs, the token in its fragment), then the run.
        page.goto(f"{runtime.base}/#token={runtime.token}")
        assert "#token" not in page.url
        page.click(f'#runs a[href="/runs/{runtime.run_id}"]')
        # The page is pushed each change: the blocked task shows running, then done once released.
        page.wait_for_function("document.querySelector('#tasks tr[data-task=\"build/compile\"]').dataset.state"
                               " === 'IN_PROGRESS'", timeout=WAIT_MS)
        assert _state_in_page(page, "release/publish") == "PENDING"
        page.click('#task-graph g.node[data-key="build/compile"] rect')
        page.wait_for_function("document.querySelector('#log').textContent.includes('compiling')", timeout=WAIT_MS)
        (tmp_path / "go").touch()
        approve = page.locator('#approvals button[data-command="approve"]')
        approve.wait_for(timeout=WAIT_MS)
        assert page.locator("#approvals").inner_text().count("Ship version 1.2?") == 1
        for task in ("build/compile", "build/unit", "build/lint"):
            assert _state_in_page(page, task) == "COMPLETED"
        assert page.locator('#task-graph g.node[data-key="release/sign-off"] rect').get_attribute(
            "class") == "s-AWAITING_APPROVAL"
        screenshot(page, "dashboard")
        approve.click()
        page.wait_for_function("document.querySelector('#tasks tr[data-task=\"release/publish\"]').dataset.state"
                               " === 'COMPLETED'", timeout=WAIT_MS)
        code, out, err = runtime.finish()
    finally:
        runtime.kill()
    assert code == 0, out + err
    assert f"run {runtime.run_id} completed" in out
    with ledger(tmp_path) as db:
        assert db.execute("SELECT status FROM runs WHERE run_id = ?", (runtime.run_id,)).fetchone()[0] == "completed"
        approvals = db.execute("SELECT task_key, payload_json FROM events WHERE run_id = ? "
                               "AND event_type = 'TASK_APPROVED'", (runtime.run_id,)).fetchall()
        audited = db.execute("SELECT command, via, uid, accepted FROM audit_log WHERE run_id = ? "
                             "AND command = 'approve'", (runtime.run_id,)).fetchall()
    assert [tuple(row) for row in audited] == [("approve", "web", os.getuid(), 1)]  # the web door, audited
    assert [(key, json.loads(payload)["who"]) for key, payload in approvals] == [
        ("release/sign-off", pwd.getpwuid(os.getuid()).pw_name)]
    # The web server was a thread of the runtime: nothing listens once it has exited.
    try:
        urllib.request.urlopen(runtime.base, timeout=5)
        raise AssertionError("the dashboard still answers after the runtime exited")
    except urllib.error.URLError:
        pass


def test_an_approve_without_the_token_or_from_another_origin_is_refused_and_changes_nothing(tmp_path, browser_context):
    (tmp_path / "go").touch()
    runtime = Runtime(tmp_path, "run", str(_write_plan(tmp_path)))
    try:
        page = browser_context.new_page()
        # Opened without the token: the page is readable, its buttons are refused.
        page.goto(f"{runtime.base}/runs/{runtime.run_id}")
        page.locator('#approvals button[data-command="approve"]').wait_for(timeout=WAIT_MS)
        status = page.evaluate("""async (run) => (await fetch('/api/command', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({command: 'approve', args: {run: run, task: 'release/sign-off'}})})).status""",
                               runtime.run_id)
        assert status == 401
        page.click('#approvals button[data-command="approve"]')
        page.wait_for_function("document.querySelector('#message').textContent.includes('401')", timeout=WAIT_MS)
        approve = {"command": "approve", "args": {"run": runtime.run_id, "task": "release/sign-off"}}
        assert _post(runtime.base, approve, {"X-Orchestrate-Token": "wrong"})[0] == 401
        # The right token from another site's page (or from no page at all) is refused too.
        assert _post(runtime.base, approve, {"X-Orchestrate-Token": runtime.token,
                                             "Origin": "http://attacker.example"})[0] == 403
        assert _post(runtime.base, approve, {"X-Orchestrate-Token": runtime.token})[0] == 403
        with urllib.request.urlopen(f"{runtime.base}/api/runs/{runtime.run_id}", timeout=30) as response:
            snapshot = json.loads(response.read())
        assert snapshot["tasks"]["release/sign-off"] == "AWAITING_APPROVAL"
        assert snapshot["tasks"]["release/publish"] == "PENDING"
        with ledger(tmp_path) as db:
            assert db.execute("SELECT count(*) FROM events WHERE event_type = 'TASK_APPROVED'").fetchone()[0] == 0
            assert db.execute("SELECT state FROM tasks WHERE task_key = 'release/publish'").fetchone()[0] == "PENDING"
        # With the token and from the dashboard's own origin it goes through.
        code, reply = _post(runtime.base, approve, {"X-Orchestrate-Token": runtime.token, "Origin": runtime.base})
        assert (code, reply["ok"]) == (200, True), reply
        code, out, err = runtime.finish()
    finally:
        runtime.kill()
    assert code == 0, out + err
    with ledger(tmp_path) as db:
        assert db.execute("SELECT count(*) FROM events WHERE event_type = 'TASK_APPROVED'").fetchone()[0] == 1


def test_a_live_allowed_failure_turns_its_row_and_node_amber_not_red(tmp_path, browser_context):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "ci", "tasks": [
        {"id": "lint", "tool": "shell", "allow_failure": True,
         "command": "while [ ! -e go ]; do sleep 0.05; done; echo 'E501 line too long'; exit 1"},
        {"id": "ship", "tool": "human", "prompt": "Ship?", "depends_on": ["lint"]}]}))
    runtime = Runtime(tmp_path, "run", str(plan))
    try:
        page = browser_context.new_page()
        page.goto(f"{runtime.base}/runs/{runtime.run_id}")
        page.wait_for_function("document.querySelector('#tasks tr[data-task=\"ci/lint\"]').dataset.state"
                               " === 'IN_PROGRESS'", timeout=WAIT_MS)
        (tmp_path / "go").touch()
        # The allowed failure lets the human step start; by then the page was pushed the failure.
        page.locator('#approvals button[data-command="approve"]').wait_for(timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#tasks tr[data-task=\"ci/lint\"] .state').textContent"
                               " === 'FAILED (allowed)'", timeout=WAIT_MS)
        assert _state_in_page(page, "ci/lint") == "FAILED"  # the state the buttons go by (retry)
        assert page.locator('#tasks tr[data-task="ci/lint"] .state .badge').get_attribute(
            "class") == "badge s-FAILED-allowed"
        assert page.locator('#task-graph g.node[data-key="ci/lint"] rect').get_attribute("class") == "s-FAILED-allowed"
        colour = page.locator('#tasks tr[data-task="ci/lint"] .state .badge').evaluate(
            "el => getComputedStyle(el).backgroundColor")
        assert colour == "rgb(201, 138, 18)", colour  # amber (#c98a12), not the red of FAILED
    finally:
        runtime.kill()
