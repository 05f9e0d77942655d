"""A conflicting merge handed to an agent, decided by the run core alone: the agent attempt it
dispatches (prompt, files, cwd, gates), and what follows each way the attempt can end."""

from __future__ import annotations

from dataclasses import replace

from domain.errors import ErrorClass
from domain.outcomes import Verdict
from domain.plan import AcceptanceCheck
from domain.routing import AdapterInfo
from domain.run_events import (
    ChangesRecorded,
    Dispatched,
    DispatchRefused,
    IntegrationEnded,
    IntegrationWanted,
    WorktreeReady,
)
from domain.states import TaskState
from tests.test_run_core import plan, task
from tests.test_run_core_gaps import Core

GATE = AcceptanceCheck(command="make test", name="tests")
CONFLICT = IntegrationEnded("r", "w", False, "orchestrate/r/w", "main", conflicts=("f.txt",),
                            resolve_path="/int/r/w", hunks="--- f.txt\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> x")


def started(on_conflict: str = "agent", adapters=(AdapterInfo("shell", "shell"), AdapterInfo("claude", "agent"))):
    c = Core(adapters=adapters)
    c.route_to = {"w/edit": "shell"}
    base = plan(task("w", "edit", acceptance=(GATE,)), isolated=("w",))
    c.open("r", replace(base, workstreams=(replace(base.workstreams[0], on_conflict=on_conflict),)))
    c.feed(WorktreeReady("r", "w", "/wt/w"))
    c.start("r", "w/edit")
    c.end("r", "w/edit")
    c.feed(ChangesRecorded("r", "w/edit", 1))
    return c


def wanted(c: Core) -> list[IntegrationWanted]:
    return [e for e in c.effects if isinstance(e, IntegrationWanted)]


def test_a_conflict_goes_to_an_agent_attempt_with_the_paths_hunks_and_the_workstreams_gates():
    c = started()
    assert [(w.on_conflict, w.resolution) for w in wanted(c)] == [("agent", "")]
    c.feed(CONFLICT)
    resolution = [e for e in c.effects if isinstance(e, Dispatched) and e.task.key == "w/@merge"]
    assert len(resolution) == 1
    spec = resolution[0].task
    assert (resolution[0].adapter, resolution[0].attempt, spec.cwd, spec.files) == ("claude", 2, "/int/r/w", ("f.txt",))
    assert "conflicts in: f.txt" in spec.prompt and "<<<<<<< HEAD" in spec.prompt
    assert spec.acceptance == (GATE,)
    assert c.noted("MERGE_RESOLUTION")[0].payload["adapter"] == "claude"

    c.start("r", "w/@merge")
    c.end("r", "w/@merge")
    assert [(w.resolution, w.resolution_failure) for w in wanted(c)][-1] == ("resolved", "")
    c.feed(IntegrationEnded("r", "w", True, "orchestrate/r/w", "main", commit="abc123"))
    assert c.state("r", "w/@merge") is TaskState.COMPLETED
    assert c.core.runs == {}


def test_a_failed_resolution_is_abandoned_and_the_workstream_fails_naming_the_paths():
    c = started()
    c.feed(CONFLICT)
    c.start("r", "w/@merge")
    c.end("r", "w/@merge", Verdict(TaskState.FAILED, ErrorClass.GATE, "gate 'tests' failed after 2 fix rounds"))
    last = wanted(c)[-1]
    assert last.resolution == "abandon" and "gate 'tests' failed" in last.resolution_failure
    c.feed(IntegrationEnded("r", "w", False, "orchestrate/r/w", "main", conflicts=("f.txt",),
                            error=last.resolution_failure))
    assert c.state("r", "w/@merge") is TaskState.FAILED
    failed = [n for n in c.noted("TASK_FAILED") if n.task_key == "w/@merge"][-1].payload
    assert failed["error_class"] == "merge"
    assert failed["message"].startswith("merge into main conflicts in f.txt; the agent's resolution failed")


def test_with_no_agent_adapter_or_its_executor_down_the_conflict_is_abandoned_at_once():
    c = started(adapters=(AdapterInfo("shell", "shell"),))
    c.feed(CONFLICT)
    assert wanted(c)[-1].resolution == "abandon" and wanted(c)[-1].resolution_failure == "no agent adapter to resolve it"

    c = started()
    c.feed(CONFLICT)
    c.feed(DispatchRefused("r", "w/@merge", 2, "claude"))
    assert wanted(c)[-1].resolution_failure == "the agent's executor claude is down"


def test_on_conflict_fail_never_asks_for_a_resolution():
    c = started(on_conflict="fail")
    c.feed(replace(CONFLICT, resolve_path="", hunks=""))
    assert [w.resolution for w in wanted(c)] == [""]
    assert c.state("r", "w/@merge") is TaskState.FAILED
