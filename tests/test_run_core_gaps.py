"""The run core in the scenarios mutation testing found unpinned: several runs at once, the
worktree handoff, the merge step's bookkeeping, retries by request, stalls over several
adapters, and what is forgotten when an attempt ends."""

from __future__ import annotations

import pytest

from domain.breaker import BreakerPolicy
from domain.errors import ErrorClass
from domain.outcomes import COMPLETED, Verdict
from domain.plan import Plan, Workstream, with_integration_steps
from domain.routing import AdapterInfo
from domain.run_core import ControlRefused, CoreConfig, RunCore, retry_closure
from domain.run_events import (
    Announced,
    AttemptBegan,
    AttemptClosed,
    AttemptEnded,
    AttemptOpened,
    CancelRequested,
    ChangesRecorded,
    Dispatched,
    DispatchRefused,
    ExecutorDown,
    ExecutorUp,
    IntegrationEnded,
    IntegrationWanted,
    LedgerHold,
    Noted,
    Phase,
    PhaseBegan,
    ProcessKill,
    ReportAccepted,
    RetryDue,
    Route,
    Routed,
    RouteRequested,
    RunOpened,
    TaskMoved,
    Tick,
    TimerSet,
    WorkstreamMoved,
    WorktreeReady,
    WorktreeWanted,
)
from domain.scheduling import RunBook
from domain.states import TaskState
from tests.test_run_core import FAILED_EXIT, TOOL_DOWN, plan, task

AT = "2026-01-01T00:00:00Z"


class Core:
    """A core with one or more adapters, driving any number of runs. Routes are answered at
    once (``answer``) to the adapter ``route_to`` names for the task, else the first one."""

    def __init__(self, concurrency: int = 4, adapters=("shell",), answer: bool = True, **config) -> None:
        infos = tuple(a if isinstance(a, AdapterInfo) else AdapterInfo(a, "shell") for a in adapters)
        self.core = RunCore(CoreConfig(concurrency, infos, **config))
        self.first = infos[0].name
        self.route_to: dict[str, str] = {}
        self.answer = answer
        self.now = 0.0
        self.effects: list = []

    def feed(self, event) -> list:
        return self._took(self.core.handle(event, self.now, AT))

    def _took(self, out: list) -> list:
        self.effects += out
        if self.answer:
            for request in [e for e in out if isinstance(e, RouteRequested)]:
                routes = tuple(Route(t.key, self.route_to.get(t.key, self.first), "rule") for t in request.tasks)
                out += self.feed(Routed(request.run_id, routes))
        return out

    def control(self, name: str, *args):
        result, out = getattr(self.core, name)(*args, self.now, AT)
        self._took(out)
        return result

    def open(self, run_id: str, the_plan: Plan, **fields) -> list:
        return self.feed(RunOpened(run_id, the_plan, "/logs", **fields))

    def dispatched(self, run_id: str | None = None) -> list[str]:
        return [e.task.key for e in self.effects if isinstance(e, Dispatched) and run_id in (None, e.run_id)]

    def attempt(self, run_id: str, key: str) -> int:
        return self.core.runs[run_id].running[key].attempt

    def start(self, run_id: str, key: str, pid: int | None = 100, create_time: float | None = 1.0) -> list:
        return self.feed(AttemptBegan(run_id, key, self.attempt(run_id, key), pid, create_time))

    def end(self, run_id: str, key: str, verdict: Verdict = COMPLETED, duration_s: float | None = 0.1) -> list:
        return self.feed(AttemptEnded(run_id, key, self.attempt(run_id, key), verdict, duration_s))

    def state(self, run_id: str, key: str) -> TaskState:
        moves = [e.state for e in self.effects if isinstance(e, TaskMoved) and e.run_id == run_id and e.task_key == key]
        return moves[-1] if moves else self.core.runs[run_id].book.states[key]

    def said(self, run_id: str, label: str) -> list[str]:
        return [e.detail for e in self.effects if isinstance(e, Announced) and e.run_id == run_id and e.label == label]

    def noted(self, event_type: str) -> list[Noted]:
        return [e for e in self.effects if isinstance(e, Noted) and e.event_type == event_type]

    def ws_states(self, run_id: str, ws_id: str) -> list[str]:
        return [e.state.value for e in self.effects if isinstance(e, WorkstreamMoved)
                and e.run_id == run_id and e.ws_id == ws_id]


# -- several runs at once -----------------------------------------------------------------------
def test_pausing_one_run_holds_back_its_work_but_not_a_run_opened_after_it():
    c = Core()
    c.open("r1", plan(task("a", "1"), task("a", "2", "a/1")))
    assert c.control("pause", "r1") == {"paused": True, "runs": ["r1"]}
    c.start("r1", "a/1")
    c.end("r1", "a/1")
    c.open("r2", plan(task("b", "1")))
    assert c.dispatched() == ["a/1", "b/1"]  # a/2 waits for its run's resume
    assert [n.run_id for n in c.noted("RUN_PAUSED")] == ["r1"]
    assert c.control("resume", "r1") == {"paused": False, "runs": ["r1"]}
    assert c.dispatched() == ["a/1", "b/1", "a/2"]


def test_resuming_one_run_leaves_another_paused_run_paused():
    c = Core()
    c.open("r1", plan(task("a", "1"), task("a", "2", "a/1")))
    c.open("r2", plan(task("b", "1"), task("b", "2", "b/1")))
    c.control("pause", "r1")
    c.control("pause", "r2")
    for run_id, key in (("r1", "a/1"), ("r2", "b/1")):
        c.start(run_id, key)
        c.end(run_id, key)
    c.control("resume", "r2")
    assert c.dispatched() == ["a/1", "b/1", "b/2"]
    assert [r["paused"] for r in c.core.status(None)["runs"]] == [True, False]


def test_pausing_everything_names_every_run():
    c = Core()
    c.open("r1", plan(task("a", "1")))
    c.open("r2", plan(task("b", "1")))
    assert c.control("pause", None) == {"paused": True, "runs": ["r1", "r2"]}


def test_with_one_slot_a_second_run_waits_for_the_first_runs_task():
    c = Core(concurrency=1)
    c.open("r1", plan(task("a", "1")))
    c.open("r2", plan(task("b", "1")))
    assert c.dispatched() == ["a/1"]
    c.start("r1", "a/1")
    c.end("r1", "a/1")
    assert c.dispatched() == ["a/1", "b/1"]


def test_the_status_of_one_run_shows_only_that_run():
    c = Core()
    c.open("r1", plan(task("a", "1")))
    c.open("r2", plan(task("b", "1")))
    assert [r["run_id"] for r in c.core.status("r2")["runs"]] == ["r2"]
    assert [r["run_id"] for r in c.core.status(None)["runs"]] == ["r1", "r2"]


def test_stopping_cancels_what_runs_in_every_run_and_counts_it():
    c = Core()
    c.open("r1", plan(task("a", "1"), task("a", "2")))
    c.open("r2", plan(task("b", "1")))
    assert c.control("stop") == {"stopping": 3}
    assert sorted(e.task_key for e in c.effects if isinstance(e, CancelRequested)) == ["a/1", "a/2", "b/1"]


def test_a_dead_executor_crashes_the_attempts_of_every_run_it_ran():
    c = Core()
    c.open("r1", plan(task("a", "1")))
    c.open("r2", plan(task("b", "1")))
    c.feed(ExecutorDown("shell", "gone"))
    assert c.state("r1", "a/1") is TaskState.FAILED and c.state("r2", "b/1") is TaskState.FAILED


def test_a_dead_executor_ends_only_its_own_attempts_whatever_order_they_started_in():
    c = Core(adapters=("a", "b"))
    c.route_to = {"w/first": "b", "w/second": "a"}
    c.open("r", plan(task("w", "first", priority=5), task("w", "second")))
    assert c.dispatched() == ["w/first", "w/second"]
    c.feed(ExecutorDown("a", "gone"))
    assert c.state("r", "w/second") is TaskState.FAILED
    assert c.state("r", "w/first") is TaskState.QUEUED and sorted(c.core.runs["r"].running) == ["w/first"]


def test_a_dead_adapter_does_not_lift_the_concurrency_limit_of_the_adapter_after_it():
    c = Core(adapters=(AdapterInfo("a", "shell"), AdapterInfo("b", "shell", concurrency=1)))
    c.route_to = {"w/1": "b", "w/2": "b"}
    c.feed(ExecutorDown("a", "gone"))
    c.open("r", plan(task("w", "1"), task("w", "2")))
    assert c.dispatched() == ["w/1"]


# -- a crash and the executor's process --------------------------------------------------------
def test_a_crash_counts_towards_the_circuit_breaker_of_the_run_it_happened_in():
    c = Core(adapters=(AdapterInfo("shell", "shell", breaker=BreakerPolicy(max_failures=1)),))
    c.open("r", plan(task("a", "1")))
    c.start("r", "a/1")
    c.feed(ExecutorDown("shell", "gone"))
    opened = c.noted("CIRCUIT_OPEN")
    assert [(n.run_id, n.payload["adapter"]) for n in opened] == [("r", "shell")]


@pytest.mark.parametrize(("pid", "create_time"), [(100, None), (None, 1.0)])
def test_a_process_is_killed_only_when_its_pid_and_create_time_are_both_known(pid, create_time):
    c = Core()
    c.open("r", plan(task("a", "1")))
    c.start("r", "a/1", pid=pid, create_time=create_time)
    out = c.feed(ExecutorDown("shell", "gone"))
    assert not [e for e in out if isinstance(e, ProcessKill)]


# -- the worktree handoff -------------------------------------------------------------------------
def worktree_plan(*ids: str, **fields) -> Plan:
    return plan(*(task("w", i, **fields) for i in ids), isolated=("w",))


def test_a_worktree_is_asked_for_once_however_many_tasks_wait_for_it():
    c = Core()
    out = c.open("r", worktree_plan("1", "2", "3"))
    assert [e for e in out if isinstance(e, WorktreeWanted)] == [WorktreeWanted("r", "w", "/repo")]


def test_the_tasks_of_a_worktree_workstream_take_over_from_each_other_in_turn():
    c = Core()
    c.open("r", worktree_plan("1", "2", "3"))
    c.feed(WorktreeReady("r", "w", "/wt/w"))
    for n, key in enumerate(["w/1", "w/2", "w/3"], 1):
        assert c.dispatched() == ["w/1", "w/2", "w/3"][:n]
        c.start("r", key)
        c.end("r", key)
        c.feed(ChangesRecorded("r", key, 1))
    assert c.state("r", "w/3") is TaskState.COMPLETED


def test_a_cancelled_task_waiting_its_turn_in_a_worktree_is_skipped_and_the_next_one_goes():
    c = Core()
    c.open("r", worktree_plan("1", "2", "3"))
    c.feed(WorktreeReady("r", "w", "/wt/w"))
    c.control("cancel", "r", "w/2")
    c.start("r", "w/1")
    c.end("r", "w/1")
    c.feed(ChangesRecorded("r", "w/1", 1))
    assert c.dispatched() == ["w/1", "w/3"]


def test_a_task_waiting_its_turn_in_a_worktree_is_blocked_when_the_run_is_quarantined():
    c = Core(quarantine_after=0)
    c.open("r", plan(task("w", "1"), task("w", "2"), task("o", "x"), isolated=("w",)))
    c.feed(WorktreeReady("r", "w", "/wt/w"))
    c.start("r", "o/x")
    c.end("r", "o/x", FAILED_EXIT)  # the first failure quarantines (threshold 0)
    assert c.state("r", "w/2") is TaskState.BLOCKED
    c.start("r", "w/1")
    c.end("r", "w/1")
    c.feed(ChangesRecorded("r", "w/1", 1))
    assert c.dispatched() == ["o/x", "w/1"]  # w/2 never starts


@pytest.mark.parametrize(("cwd", "moved"), [
    ("/repo/sub/dir", "/wt/w/sub/dir"),  # inside the repository: the same place in the worktree
    ("/elsewhere", "/wt/w"),  # outside it: the worktree's root
    (None, "/wt/w"),  # none given: the worktree's root
])
def test_a_worktree_tasks_cwd_moves_into_the_worktree(cwd, moved):
    c = Core()
    c.open("r", worktree_plan("1", cwd=cwd))
    out = c.feed(WorktreeReady("r", "w", "/wt/w"))
    assert [e.task.cwd for e in out if isinstance(e, Dispatched)] == [moved]


def test_a_workstream_with_a_repo_but_no_worktree_isolation_runs_in_place():
    the_plan = with_integration_steps(Plan((Workstream("w", tasks=(task("w", "1", cwd="/repo/x"),), repo="/repo"),),
                                           "plan", "/base"))
    c = Core()
    out = c.open("r", the_plan)
    assert not [e for e in out if isinstance(e, WorktreeWanted)]
    assert [e.task.cwd for e in out if isinstance(e, Dispatched)] == ["/repo/x"]


# -- the merge step -------------------------------------------------------------------------------
def merging_run(c: Core, **ws_fields) -> None:
    """Run "r": workstream w (one task, in a worktree of /repo) and o/x, still running, so the
    run stays open whatever the merge does."""
    w = Workstream("w", tasks=(task("w", "1"),), repo="/repo", isolation="worktree", **ws_fields)
    o = Workstream("o", tasks=(task("o", "x"),))
    c.open("r", with_integration_steps(Plan((w, o), "plan", "/base")))
    c.feed(WorktreeReady("r", "w", "/wt/w"))
    c.start("r", "w/1")
    c.end("r", "w/1")
    c.feed(ChangesRecorded("r", "w/1", 1))


def test_the_merge_step_is_asked_for_with_its_target_branch_and_timed_from_when_it_began():
    c = Core()
    c.now = 5.0
    merging_run(c, target_branch="main")
    assert [e for e in c.effects if isinstance(e, IntegrationWanted)] == [IntegrationWanted("r", "w", "main", "merge")]
    c.now = 7.5

    out = c.feed(IntegrationEnded("r", "w", merged=True, branch="b", target="main", commit="abc"))
    assert [e.duration_s for e in out if isinstance(e, AttemptClosed)] == [2.5]


def test_the_merge_step_takes_no_executor_slot_and_a_stop_cancels_nothing_of_it():
    c = Core(concurrency=2)
    merging_run(c)
    assert c.control("stop") == {"stopping": 1}  # o/x only
    assert c.core.status(None)["running"] == 1
    c.feed(IntegrationEnded("r", "w", merged=True, branch="b", target="main", commit="abc"))
    assert c.core.status(None)["running"] == 1
    route = [e for e in c.effects if isinstance(e, RouteRequested)]
    assert all(dict(r.load).get("workspace") is None for r in route)


def test_a_failed_merge_retried_by_request_makes_a_new_worktree_and_is_a_second_attempt():
    c = Core()
    merging_run(c)
    c.feed(IntegrationEnded("r", "w", merged=False, branch="b", target="main",
                           error="cannot lock ref refs/heads/X."))
    failed = [e for e in c.effects if isinstance(e, TaskMoved) and e.state is TaskState.FAILED]
    assert failed[-1].reason.startswith("cannot lock ref refs/heads/X; once that is fixed")
    c.control("retry", "r", "w/@merge")
    assert [e for e in c.effects if isinstance(e, WorktreeWanted)] == [WorktreeWanted("r", "w", "/repo")] * 2
    out = c.feed(WorktreeReady("r", "w", "/wt/w2"))

    assert [(e.task_key, e.attempt, e.adapter) for e in out if isinstance(e, AttemptOpened)] == [("w/@merge", 2, "workspace")]


# -- retries, approvals and refusals by request ---------------------------------------------------
def test_a_retry_by_request_restarts_the_tasks_retry_budget():
    c = Core()
    c.open("r", plan(task("a", "x", max_attempts=2, backoff_s=0.1), task("b", "y")))
    for _ in range(2):
        c.start("r", "a/x")
        c.end("r", "a/x", FAILED_EXIT)
        if c.state("r", "a/x") is TaskState.RETRY_WAIT:
            c.feed(RetryDue("r", "a/x"))
    assert c.state("r", "a/x") is TaskState.FAILED
    c.control("retry", "r", "a/x")
    c.start("r", "a/x")
    c.end("r", "a/x", FAILED_EXIT)
    assert c.state("r", "a/x") is TaskState.RETRY_WAIT


def test_a_retry_refused_for_a_completed_task_or_an_unknown_one_says_why():
    c = Core()
    c.open("r", plan(task("a", "x"), task("a", "y")))
    c.start("r", "a/x")
    c.end("r", "a/x")
    with pytest.raises(ControlRefused, match=r"^task a/x is COMPLETED; only failed, timed-out, blocked or "
                                             r"cancelled tasks can be retried$"):
        c.control("retry", "r", "a/x")
    with pytest.raises(ControlRefused, match=r"^run r has no task 'a/z'$"):
        c.control("retry", "r", "a/z")


def test_an_approval_refused_names_the_state_the_task_is_in_or_that_it_is_unknown():
    c = Core()
    c.open("r", plan(task("a", "x")))
    with pytest.raises(ControlRefused, match=r"^task a/x is not awaiting approval \(it is QUEUED\)$"):
        c.control("approve", "r", "a/x", True, "me", "")
    with pytest.raises(ControlRefused, match=r"^task a/z is not awaiting approval \(it is unknown\)$"):
        c.control("approve", "r", "a/z", False, "me", "")


def test_a_retry_by_request_lifts_a_quarantine_and_the_task_runs_again():
    c = Core(quarantine_after=0)
    c.open("r", plan(task("a", "x"), task("b", "long")))
    c.start("r", "a/x")
    c.end("r", "a/x", FAILED_EXIT)  # quarantined at once (threshold 0); b/long still runs
    assert c.control("retry", "r", "a/x") == {"retried": ["a/x"]}
    assert c.dispatched("r") == ["a/x", "b/long", "a/x"]


def test_a_retry_with_several_failed_prerequisites_resets_them_all():
    c = Core()
    c.open("r", plan(task("a", "w"), task("a", "x"), task("a", "y", "a/x"), task("a", "z", "a/w", "a/x", "a/y"),
                     task("b", "long")))
    for key in ("a/w", "a/x"):
        c.start("r", key)
        c.end("r", key, Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT, "no"))
    assert c.state("r", "a/z") is TaskState.BLOCKED
    assert c.control("retry", "r", "a/z") == {"retried": ["a/w", "a/x", "a/y", "a/z"]}


def test_retry_closure_takes_every_unsuccessful_prerequisite_and_leaves_completed_dependants():
    deps = {"w": (), "x": (), "y": ("x",), "z": ("w", "x", "y"), "done": ("z",)}
    book = RunBook(deps=deps, priorities={k: 0 for k in deps}, workstream_of={k: "a" for k in deps},
                   states={"w": TaskState.FAILED, "x": TaskState.FAILED, "y": TaskState.BLOCKED,
                           "z": TaskState.BLOCKED, "done": TaskState.COMPLETED})
    assert retry_closure(book, ("z",)) == {"w", "x", "y", "z"}
    assert retry_closure(book, ("x",)) == {"x", "y", "z"}
    assert retry_closure(book, ("w", "x", "x")) == {"w", "x", "y", "z"}  # a task named twice


# -- what an attempt's end clears -----------------------------------------------------------------
def test_an_attempt_that_ends_leaves_no_fix_phase_or_approval_prompt_behind():
    c = Core()
    c.open("r", plan(task("a", "x"), task("a", "y", max_attempts=2, backoff_s=0.1)))
    c.start("r", "a/x")
    c.feed(PhaseBegan("r", "a/x", 1, Phase.AWAITING, "ok to deploy?"))
    c.end("r", "a/x", Verdict(TaskState.FAILED, ErrorClass.REJECTED, "rejected"))
    assert c.core.status("r")["runs"][0]["awaiting_approval"] == []
    c.start("r", "a/y")
    c.feed(PhaseBegan("r", "a/y", 1, Phase.FIXING, "lint", round=1))
    c.end("r", "a/y", FAILED_EXIT)
    assert c.ws_states("r", "a")[-1] == "editing"  # a/y retries: no fix round is going on


def test_a_completed_attempt_without_a_duration_says_nothing_about_time():
    c = Core()
    c.open("r", plan(task("a", "x"), task("a", "y")))
    c.start("r", "a/x")
    record = object()
    out = c.feed(AttemptEnded("r", "a/x", 1, COMPLETED, None, report=record))
    assert [e.reason for e in out if isinstance(e, TaskMoved) and e.task_key == "a/x"] == [""]
    assert any(isinstance(e, ReportAccepted) and e.report is record for e in out)


def test_a_cancelled_queued_task_is_not_dispatched_when_a_slot_frees():
    c = Core(concurrency=1)
    c.open("r", plan(task("a", "x"), task("a", "y"), task("a", "z")))
    c.control("cancel", "r", "a/y")
    c.start("r", "a/x")
    c.end("r", "a/x")
    assert c.dispatched() == ["a/x", "a/z"]


# -- a workstream at work stays at work ----------------------------------------------------------
INTERRUPTED = Verdict(TaskState.FAILED, ErrorClass.INTERRUPTED, "interrupted")


@pytest.mark.parametrize(("phase", "shown"), [(Phase.STATIC, "static_check"), (Phase.RUNTIME, "runtime_check"),
                                              (Phase.FIXING, "fixing")])
def test_a_workstream_whose_task_is_interrupted_in_its_checks_stays_at_work_never_back_to_ready(phase, shown):
    c = Core()
    c.open("r", plan(task("a", "x"), task("b", "other")))
    c.start("r", "a/x")
    c.feed(PhaseBegan("r", "a/x", 1, phase, "checks", round=1))
    assert c.ws_states("r", "a")[-1] == shown
    c.end("r", "a/x", INTERRUPTED)  # queued again, as if it had not started
    assert c.state("r", "a/x") in (TaskState.QUEUED, TaskState.IN_PROGRESS)
    assert c.ws_states("r", "a")[-1] == "editing"  # its task is queued again: not "ready"


@pytest.mark.parametrize("phase", [Phase.STATIC, Phase.RUNTIME, Phase.FIXING])
def test_a_workstream_whose_task_is_interrupted_in_its_checks_never_shows_failed(phase):
    c = Core()
    c.open("r", plan(task("a", "x"), task("b", "other")))
    c.start("r", "a/x")
    c.feed(PhaseBegan("r", "a/x", 1, phase, "checks", round=1))
    c.end("r", "a/x", INTERRUPTED)
    assert "failed" not in c.ws_states("r", "a")


# -- routing answers --------------------------------------------------------------------------------
def test_a_route_for_a_task_cancelled_meanwhile_is_ignored_and_the_rest_of_the_answer_applies():
    c = Core(answer=False)
    c.open("r", plan(task("a", "x"), task("a", "y")))
    c.control("cancel", "r", "a/x")
    c.feed(Routed("r", (Route("a/x", "shell", "rule"), Route("a/y", "shell", "rule"))))
    assert c.dispatched() == ["a/y"]


def test_a_second_route_for_a_task_already_waiting_for_a_slot_does_not_move_it():
    c = Core(concurrency=1, adapters=("a", "b"))
    c.open("r", plan(task("w", "x", priority=1), task("w", "y")))
    c.feed(Routed("r", (Route("w/y", "b", "late"),)))
    c.start("r", "w/x")
    c.end("r", "w/x")
    assert [(e.task.key, e.adapter) for e in c.effects if isinstance(e, Dispatched)] == [("w/x", "a"), ("w/y", "a")]


def test_a_task_queued_for_an_adapter_whose_circuit_opens_is_routed_again_and_may_go_elsewhere():
    c = Core(adapters=(AdapterInfo("a", "shell", concurrency=1, breaker=BreakerPolicy(max_failures=1, reset_timeout_s=0.4)),
                       AdapterInfo("b", "shell")))
    c.open("r", plan(task("w", "x", priority=1), task("w", "y")))
    c.route_to["w/y"] = "b"  # the router's next answer, with a's circuit open
    c.start("r", "w/x")
    out = c.end("r", "w/x", TOOL_DOWN)
    assert [e.delay_s for e in out if isinstance(e, TimerSet)] == [0.4]
    assert [(e.task.key, e.adapter) for e in c.effects if isinstance(e, Dispatched)] == [("w/x", "a"), ("w/y", "b")]


# -- stalls and safe mode --------------------------------------------------------------------------
def refused(c: Core, run_id: str, key: str) -> None:
    """``key``'s executor refuses the dispatch: it is down, and the task waits for it."""
    c.feed(DispatchRefused(run_id, key, c.attempt(run_id, key), c.core.runs[run_id].running[key].adapter))


def test_work_waiting_for_a_dead_executor_is_a_stall_that_says_so():
    c = Core()
    c.open("r", plan(task("a", "x")))
    refused(c, "r", "a/x")
    c.feed(Tick())
    assert c.said("r", "WAITING") == ["waiting: executor 'shell' is down"]


def test_a_stall_is_noticed_in_each_run_even_when_an_earlier_run_is_not_stalled():
    c = Core(adapters=("a", "b"))
    c.route_to = {"y/1": "b"}
    c.open("r1", plan(task("x", "1")))
    c.open("r2", plan(task("y", "1")))
    refused(c, "r2", "y/1")
    c.feed(Tick())
    assert c.said("r1", "WAITING") == [] and c.said("r2", "WAITING") == ["waiting: executor 'b' is down"]


def test_no_stall_is_said_while_one_run_or_everything_is_paused_and_a_new_stall_is_said_at_once():
    c = Core()
    c.open("r", plan(task("a", "x")))
    refused(c, "r", "a/x")
    c.feed(Tick())
    c.control("pause", "r")
    c.feed(Tick())
    c.control("resume", "r")
    c.control("pause", None)
    c.feed(Tick())
    assert c.said("r", "WAITING") == ["waiting: executor 'shell' is down"]
    c.control("resume", None)
    c.now = 1.0
    c.feed(Tick())
    assert c.said("r", "WAITING") == ["waiting: executor 'shell' is down"] * 2


def test_no_stall_while_something_of_the_run_still_runs():
    c = Core()
    c.open("r", plan(task("a", "x"), task("a", "y")))
    refused(c, "r", "a/y")
    c.feed(Tick())
    assert c.said("r", "WAITING") == []


def test_work_held_back_by_the_ledger_on_a_working_adapter_is_no_stall():
    c = Core(adapters=("a", "b"))
    c.route_to = {"w/y": "b"}
    c.open("r", plan(task("w", "x")))
    refused(c, "r", "w/x")
    c.feed(LedgerHold(True))
    c.open("r2", plan(task("w", "y")))
    c.feed(Tick())
    assert c.said("r2", "WAITING") == []


def test_a_probe_due_in_under_a_second_is_said_as_0s():
    c = Core(adapters=(AdapterInfo("shell", "shell", breaker=BreakerPolicy(max_failures=1, reset_timeout_s=0.4)),))
    c.open("r", plan(task("a", "x", max_attempts=2, backoff_s=0.0)))
    c.start("r", "a/x")
    c.end("r", "a/x", TOOL_DOWN)
    c.feed(RetryDue("r", "a/x"))
    c.feed(Tick())
    assert c.said("r", "WAITING") == ["waiting: circuit 'shell' open, next probe in 0s"]


def test_safe_mode_comes_exactly_at_its_limit_names_every_adapter_and_stops_every_stalled_run():
    c = Core(adapters=("a", "b"), safe_mode_after_s=120.0)
    c.route_to = {"w/y": "b", "v/y": "b"}
    c.open("r1", plan(task("w", "x"), task("w", "y")))
    c.open("r2", plan(task("v", "x"), task("v", "y")))
    for run_id, ws in (("r1", "w"), ("r2", "v")):
        refused(c, run_id, f"{ws}/x")
        refused(c, run_id, f"{ws}/y")
    c.feed(Tick())
    assert c.said("r1", "WAITING") == ["waiting: executor 'a' is down; executor 'b' is down"]
    c.now = 120.0
    c.feed(Tick())
    modes = c.noted("RUN_SAFE_MODE")
    assert [n.run_id for n in modes] == ["r1", "r2"]
    assert modes[0].payload["reason"].startswith("safe mode: every adapter this run needs ('a', 'b') has been")


def test_the_time_waited_before_safe_mode_is_recorded_to_a_tenth_of_a_second():
    c = Core(safe_mode_after_s=120.0)
    c.open("r", plan(task("a", "x")))
    refused(c, "r", "a/x")
    c.feed(Tick())
    c.now = 120.04
    c.feed(Tick())
    assert c.noted("RUN_SAFE_MODE")[0].payload["waited_s"] == 120.0


def test_after_safe_mode_a_retry_by_request_lets_the_run_start_again():
    c = Core(safe_mode_after_s=10.0)
    c.open("r", plan(task("a", "x"), task("w", "t"), isolated=("w",)))  # the worktree never comes: the run stays
    refused(c, "r", "a/x")
    c.feed(Tick())
    c.now = 10.0
    c.feed(Tick())
    status = c.core.status("r")["runs"][0]
    assert status["stop_reason"].startswith("safe mode") and status["quarantine_reason"] == ""
    assert c.state("r", "a/x") is TaskState.BLOCKED
    c.control("retry", "r", "a/x")
    c.feed(ExecutorUp("shell"))
    assert c.dispatched() == ["a/x", "a/x"]


def test_a_refused_dispatch_in_a_cancelled_run_starts_nothing_and_is_no_stall():
    c = Core()
    c.open("r", plan(task("a", "x")))
    c.control("cancel", "r", None)
    refused(c, "r", "a/x")
    c.feed(Tick())
    c.feed(ExecutorUp("shell"))
    assert c.dispatched() == ["a/x"] and c.said("r", "WAITING") == []


# -- nothing stale is left waiting for a slot ---------------------------------------------------
def test_a_cancelled_task_no_longer_counts_as_waiting_for_its_adapter():
    c = Core(concurrency=1)
    c.open("r", plan(task("a", "x"), task("a", "y"), task("a", "z")))
    assert c.core.status(None)["queued"] == {"shell": 2}
    c.control("cancel", "r", "a/y")
    assert c.core.status(None)["queued"] == {"shell": 1}


def test_work_blocked_by_a_quarantine_no_longer_counts_as_waiting_for_its_adapter():
    c = Core(adapters=(AdapterInfo("a", "shell", concurrency=1), AdapterInfo("b", "shell")), quarantine_after=0)
    c.route_to = {"w/long": "b"}
    c.open("r", plan(task("w", "x", priority=1), task("w", "y"), task("w", "long")))
    assert c.core.status(None)["queued"] == {"a": 1}
    c.start("r", "w/x")
    c.end("r", "w/x", FAILED_EXIT)  # quarantined; w/long still runs, so the run stays
    assert c.state("r", "w/y") is TaskState.BLOCKED
    assert c.core.status(None)["queued"] == {}


def test_a_task_blocked_while_waiting_for_its_worktree_and_retried_is_routed_once_when_it_comes():
    c = Core(safe_mode_after_s=10.0)
    c.open("r", plan(task("a", "x"), task("w", "t"), isolated=("w",)))
    refused(c, "r", "a/x")
    c.feed(Tick())
    c.now = 10.0
    c.feed(Tick())  # safe mode: w/t, waiting for its worktree, is blocked too
    assert c.state("r", "w/t") is TaskState.BLOCKED
    c.control("retry", "r", "w/t")
    out = c.feed(WorktreeReady("r", "w", "/wt/w"))
    assert [tuple(t.key for t in e.tasks) for e in out if isinstance(e, RouteRequested)] == [("w/t",)]
