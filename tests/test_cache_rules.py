"""Incremental runs and fixed plans as specifications: the pure decisions (domain.cache,
domain.plan_change) and what the run core does with them — no threads, no files, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from domain.cache import (
    CacheHit,
    cache_basis,
    cache_key,
    cache_policy,
    decide,
    definition_digest,
    merge_result,
    merged_commit,
    outputs_problem,
)
from domain.outcomes import COMPLETED
from domain.plan import INTEGRATION_TOOL, Workstream
from domain.plan_change import compare
from domain.results import ResultRef
from domain.run_events import (
    AttemptBegan,
    AttemptClosed,
    AttemptEnded,
    AttemptReused,
    ChangesRecorded,
    IntegrationEnded,
    ReportAccepted,
    TaskMoved,
    WorktreeReady,
    WorktreeWanted,
)
from domain.states import TaskState
from tests.test_run_core import Harness, plan, task


# -- what is cacheable ---------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "tool", "cacheable", "why"), [
    ({"files_in": ("src/*.py",)}, "shell", True, ""),
    ({"inputs": (("x", "a/1"),)}, "python", True, ""),
    ({}, "shell", False, "declares neither files_in nor inputs"),
    ({"cache": True}, "shell", True, ""),
    ({"files_in": ("x",), "cache": False}, "shell", False, '"cache": false'),
    ({"files_in": ("x",)}, "agent", False, "cached only with \"cache\": true"),
    ({"cache": True}, "aider", True, ""),
    ({"cache": True}, "human", False, "never cached"),
])
def test_what_may_be_taken_from_an_earlier_run(fields, tool, cacheable, why):
    ok, reason = cache_policy(task("a", "1", tool=tool, **fields))
    assert ok is cacheable and why in reason


def test_a_worktree_workstream_is_cached_only_as_a_whole_when_it_asks_and_merges():
    agent, merge = task("a", "1", tool="agent"), task("a", "@merge", tool=INTEGRATION_TOOL)
    asked = Workstream("a", repo="/repo", isolation="worktree", cache=True)
    for spec in (agent, merge, task("a", "2")):
        assert cache_policy(spec, asked) == (True, ""), "an agent, a merge, a task declaring nothing"
    assert cache_policy(task("a", "2", files_in=("x",)), replace(asked, cache=None)) == (
        False, 'a worktree workstream is cached only as a whole, with "cache": true on the workstream')
    assert "left for review" in cache_policy(agent, replace(asked, merge="leave"))[1]
    assert cache_policy(task("a", "3", tool="human"), asked)[0] is False
    assert cache_policy(task("a", "4", cache=False), asked) == (False, '"cache": false')
    assert cache_policy(merge) == (False, "integrate steps are never cached")


def test_a_worktree_task_key_changes_with_where_its_work_goes():
    spec = task("a", "1")
    there = Workstream("a", repo="/repo", isolation="worktree", cache=True)
    digests = {definition_digest(spec, "", ws) for ws in (
        there, replace(there, target_branch="dev"), replace(there, setup=("make venv",)),
        replace(there, repo="/other"))}
    assert len(digests) == 4
    assert definition_digest(spec, "", replace(there, title="renamed", budget_usd=3.0)) == \
        definition_digest(spec, "", there), "a title or a budget changes nothing a task produces"
    assert definition_digest(spec) != definition_digest(spec, "", there)


def test_a_merge_result_carries_its_commit_and_target_and_anything_else_has_none():
    assert merged_commit(merge_result("abc123", "orchestrate/r/f", "main")) == ("abc123", "main")
    for recorded in ("", "[1]", "not json", '{"commit": null}'):
        assert merged_commit(recorded) == ("", "")


# -- the key ---------------------------------------------------------------------------------------
def test_the_key_changes_with_what_determines_the_output_and_only_with_that():
    base = task("a", "1", files_in=("x",), env=(("K", "1"),))
    key = cache_key(cache_basis(definition_digest(base), ["dep-key"]), {"x": "h1"})
    same = [
        task("a", "1", files_in=("x",), env=(("K", "1"),), priority=5, timeout_s=9.0, max_attempts=3),
    ]
    for spec in same:
        assert cache_key(cache_basis(definition_digest(spec), ["dep-key"]), {"x": "h1"}) == key
    different = [
        cache_key(cache_basis(definition_digest(task("a", "1", files_in=("x",), env=(("K", "2"),))), ["dep-key"]),
                  {"x": "h1"}),
        cache_key(cache_basis(definition_digest(base), ["dep-key"]), {"x": "h2"}),
        cache_key(cache_basis(definition_digest(base), ["other"]), {"x": "h1"}),
        cache_key(cache_basis(definition_digest(base, "CPython 3.12.0"), ["dep-key"]), {"x": "h1"}),
        cache_key(cache_basis(definition_digest(task("a", "1", files_in=("x",), env=(("K", "1"),), cwd="/b")),
                              ["dep-key"]), {"x": "h1"}),
    ]
    assert key not in different and len(set(different)) == len(different)


def test_outputs_stand_only_when_every_recorded_file_has_its_hash_and_nothing_else_matches():
    assert outputs_problem('{"a": "1"}', {"a": "1"}, []) == ""
    assert outputs_problem('{"a": "1"}', {"a": "2"}, []) == "its files_out changed since (a)"
    assert outputs_problem('{"a": "1"}', {"a": "1", "b": "3"}, []) == "its files_out changed since (b)"
    assert outputs_problem('{"a": "1"}', {}, ["out/*"]) == "its files_out 'out/*' match no file now"


# -- the decision ----------------------------------------------------------------------------------
ORDER = ["w/a", "w/b", "w/c", "w/d"]
DEPS = {"w/a": set(), "w/b": {"w/a"}, "w/c": {"w/b"}, "w/d": set()}
ALL_CACHEABLE = {key: (True, "") for key in ORDER}
KEYS = {key: f"k-{key}" for key in ORDER}
HITS = {f"k-{key}": CacheHit(f"k-{key}", f"run-1/{key}/1") for key in ORDER}


def _runs(decisions) -> list[str]:
    return [d.task_key for d in decisions if d.run]


def test_a_task_is_reused_when_its_key_has_a_completed_attempt_and_nothing_before_it_runs():
    decisions = decide(ORDER, DEPS, ALL_CACHEABLE, KEYS, HITS)
    assert _runs(decisions) == []
    assert decisions[0].why == "cached: same key as run-1/w/a/1" and decisions[0].hit == HITS["k-w/a"]


def test_a_task_that_runs_makes_everything_downstream_run():
    hits = {k: v for k, v in HITS.items() if k != "k-w/b"}
    decisions = decide(ORDER, DEPS, ALL_CACHEABLE, KEYS, hits)
    assert _runs(decisions) == ["w/b", "w/c"]
    assert decisions[2].why == "its dependency w/b runs"


def test_force_a_task_or_all_and_an_uncacheable_task_always_runs():
    assert _runs(decide(ORDER, DEPS, ALL_CACHEABLE, KEYS, HITS, force=["w/b"])) == ["w/b", "w/c"]
    assert _runs(decide(ORDER, DEPS, ALL_CACHEABLE, KEYS, HITS, force_all=True)) == ORDER
    policies = dict(ALL_CACHEABLE) | {"w/a": (False, "it declares neither files_in nor inputs")}
    decisions = decide(ORDER, DEPS, policies, KEYS, HITS)
    assert _runs(decisions) == ["w/a", "w/b", "w/c"]
    assert decisions[0].why == "not cached: it declares neither files_in nor inputs"


def test_a_hit_whose_outputs_changed_runs_and_tasks_done_in_the_run_are_kept():
    hits = dict(HITS) | {"k-w/c": CacheHit("k-w/c", "run-1/w/c/1", outputs_problem="its files_out changed since (x)")}
    decisions = decide(ORDER, DEPS, ALL_CACHEABLE, KEYS, hits, done=["w/a"])
    assert _runs(decisions) == ["w/c"]
    assert decisions[0].why == "completed earlier in this run" and decisions[2].why.startswith("its files_out")


def test_a_worktree_workstream_is_reused_whole_or_runs_whole():
    order = ["s/init", "f/edit", "f/docs", "f/@merge", "after/x"]
    deps = {"s/init": set(), "f/edit": {"s/init"}, "f/docs": set(), "f/@merge": {"f/edit", "f/docs"},
            "after/x": {"f/@merge"}}
    policies = {key: (True, "") for key in order}
    keys = {key: f"k-{key}" for key in order}
    hits = {f"k-{key}": CacheHit(f"k-{key}", f"run-1/{key}/1") for key in order}
    groups = {"f/edit": "f", "f/docs": "f", "f/@merge": "f"}
    assert _runs(decide(order, deps, policies, keys, hits, groups=groups)) == []

    gone = dict(hits) | {"k-f/@merge": CacheHit("k-f/@merge", "run-1/f/@merge/1",
                                                   outputs_problem="its merge commit abc is no longer in main")}
    decisions = decide(order, deps, policies, keys, gone, groups=groups)
    assert _runs(decisions) == ["f/edit", "f/docs", "f/@merge", "after/x"], "the merge came last, all of f runs"
    assert decisions[2].why == ("its worktree workstream f runs "
                                "(f/@merge: its merge commit abc is no longer in main)")
    assert _runs(decide(order, deps, policies, keys, hits, force=["f/docs"], groups=groups)) == order[1:]
    assert _runs(decide(order, deps, policies, keys, hits, groups=groups, done=["f/edit"],
                        force=["f/docs"])) == ["f/docs", "f/@merge", "after/x"], "what the run did is kept"
    assert _runs(decide(order, deps, policies, keys, hits, force=["f/docs"])) == ["f/docs", "f/@merge", "after/x"]
    resumed = decide(order, deps, policies, keys, hits, groups=groups, done=["s/init", "f/edit"])
    assert _runs(resumed) == ["f/docs", "f/@merge", "after/x"], "a workstream begun in this run is finished in it"
    assert resumed[2].why == "its worktree workstream f was partly done in this run"


# -- the run core reusing results -------------------------------------------------------------------
def test_the_core_completes_reused_tasks_without_dispatching_them_and_passes_their_result_on():
    h = Harness()
    first = task("a", "1", files_in=("x",))
    second = task("a", "2", "a/1", inputs=(("value", "a/1"),))
    hit = CacheHit("key-1", "run-0/a/1/1", ResultRef(text='{"n": 1}'))
    h.open(plan(first, second), cached={"a/1": hit}, definitions={"a/2": "def-2"})
    reused = [e for e in h.effects if isinstance(e, AttemptReused)]
    assert [(e.task_key, e.attempt, e.hit) for e in reused] == [("a/1", 1, hit)]
    moves = [(e.task_key, e.state, e.adapter) for e in h.effects if isinstance(e, TaskMoved) and e.task_key == "a/1"]
    assert moves == [("a/1", TaskState.QUEUED, ""), ("a/1", TaskState.COMPLETED, "cache")]
    [dispatched] = h.dispatched()
    assert dispatched.task.key == "a/2"
    assert dispatched.inputs == (("value", ResultRef(text='{"n": 1}')),)
    assert dispatched.cache_basis == cache_basis("def-2", ["key-1"])


def test_a_long_chain_of_reused_results_completes_without_recursion():
    tasks = [task("a", "0", files_in=("x",))] + [task("a", str(i), f"a/{i - 1}", files_in=("x",))
                                                  for i in range(1, 3000)]
    h = Harness()
    h.open(plan(*tasks), cached={t.key: CacheHit(f"k{t.id}", "run-0") for t in tasks})
    assert h.finished() is not None and h.finished().state.value == "completed"


def test_a_result_reaches_the_tasks_that_take_it_and_an_empty_one_is_null():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2"), task("a", "3", "a/1", "a/2", inputs=(("x", "a/1"), ("y", "a/2")))))
    for key, result in (("a/1", ResultRef(text="[1, 2]")), ("a/2", None)):
        attempt = h.core.runs["r"].running[key].attempt
        h.feed(AttemptEnded("r", key, attempt, COMPLETED, 0.1, result=result))
    last = h.dispatched()[-1]
    assert last.task.key == "a/3" and last.inputs == (("x", ResultRef(text="[1, 2]")), ("y", ResultRef()))


# -- applying a changed plan -------------------------------------------------------------------------
def test_a_changed_definition_reruns_it_and_its_dependants():
    old = plan(task("a", "1"), task("a", "2", "a/1"), task("b", "1"), after={"b": ()})
    new = plan(task("a", "1", env=(("K", "v"),)), task("a", "2", "a/1"), task("b", "1"))
    change = compare(old, new)
    assert change.problems == () and change.changed == ("a/1",) and change.rerun == ("a/1", "a/2")


def test_a_changed_dependency_counts_as_a_change_and_nothing_changed_reruns_nothing():
    old = plan(task("a", "1"), task("a", "2"))
    assert compare(old, old).rerun == ()
    new = plan(task("a", "1"), task("a", "2", "a/1"))
    assert compare(old, new).changed == ("a/2",)


def test_changes_a_run_cannot_take_are_named():
    old = plan(task("a", "1"), task("a", "2", "a/1"), task("a", "3", "a/2"))
    change = compare(old, plan(task("a", "1"), task("a", "3"), task("a", "4")))
    assert change.problems == ("task a/2 was removed; a/3 depended on it", "task a/4 was added")
    worktree = compare(plan(task("w", "1"), isolated=("w",)), plan(task("w", "1")))
    assert "task w/@merge was removed" in worktree.problems[0]
    assert any("workstream w changed its repo, isolation" in p for p in worktree.problems)


def test_a_worktree_task_and_its_merge_record_keys_known_before_they_ran():
    """Their files are the branch's: no executor hashes them, the core names the key, and the
    merge's result is its commit, so a later run can check that commit is still merged."""
    h = Harness()
    edit = task("f", "edit")
    the_plan = plan(edit, isolated=("f",))
    definitions = {"f/edit": "def-edit", "f/@merge": "def-merge"}
    h.open(the_plan, definitions=definitions)
    assert [e for e in h.effects if isinstance(e, WorktreeWanted)] == [WorktreeWanted("r", "f", "/repo")]
    h.feed(WorktreeReady("r", "f", "/wt/f"))
    [dispatched] = h.dispatched()
    assert dispatched.cache_basis == "", "the executor has no files to hash"
    h.feed(AttemptBegan("r", "f/edit", 1))
    h.feed(AttemptEnded("r", "f/edit", 1, COMPLETED, 0.1, report="the executor's report"))
    out = h.feed(ChangesRecorded("r", "f/edit", 1))
    edit_key = cache_key(cache_basis("def-edit", []), {})
    assert ReportAccepted("the executor's report", edit_key) in out
    h.feed(IntegrationEnded("r", "f", merged=True, branch="orchestrate/r/f", target="main", commit="c0ffee"))
    [closed] = [e for e in h.effects if isinstance(e, AttemptClosed) and e.task_key == "f/@merge"]
    assert closed.cache_key == cache_key(cache_basis("def-merge", [edit_key]), {})
    assert merged_commit(closed.result.text) == ("c0ffee", "main")
    assert h.finished().state.value == "completed"


def test_a_reused_worktree_workstream_makes_no_worktree_and_merges_nothing():
    h = Harness()
    the_plan = plan(task("f", "edit"), task("g", "after", "f/@merge"), isolated=("f",))
    cached = {key: CacheHit(f"k-{key}", f"run-0/{key}/1") for key in ("f/edit", "f/@merge")}
    h.open(the_plan, cached=cached)
    assert not [e for e in h.effects if isinstance(e, WorktreeWanted)]
    assert [e.task_key for e in h.effects if isinstance(e, AttemptReused)] == ["f/edit", "f/@merge"]
    assert [d.task.key for d in h.dispatched()] == ["g/after"]
