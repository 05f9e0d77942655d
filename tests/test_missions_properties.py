"""Properties of the mission planner over random params, for every template.

Whatever the params (known keys with right or wrong types, unknown keys, any check count),
``build_workflow`` either refuses with an ``AntiFailurePlanningError`` or returns a workflow
inside the envelope whose kept steps are closed under dependencies; equal missions hash equal
and missions with a different canonical form hash differently.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planning.mission_templates import TEMPLATES
from planning.missions import (
    MAX_HUMAN_STEPS,
    MAX_STEPS,
    AntiFailurePlanningError,
    MissionParamError,
    MissionSpec,
    StepLimitExceeded,
    build_workflow,
    envelope_problems,
    mission_hash,
    validate_envelope,
    workflow_to_plan,
)
from domain.plan import canonical_json
from planning.schemas import schema_issues

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

texts = st.text(max_size=20)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=60),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    texts,
)
# Well-typed values of each template's params; "wild" missions mix in any scalar.
VALID = {
    "daily_loop": {
        "focus": texts,
        "checks": st.integers(min_value=0, max_value=50),
        "project": st.sampled_from([".", "src", "/tmp/project", "a dir"]),
        "review": st.one_of(st.booleans(), st.integers(min_value=0, max_value=6)),
        "strict": st.booleans(),
    },
    "run_tests": {
        "target": st.sampled_from(["project", "/abs/project", "a b", "."]),
        "runner": st.just("pytest"),
        "args": st.sampled_from(["-q", "-x -k 'a or b'", "", "-vv tests/", "-qq --maxfail=2"]),
        "timeout_s": st.one_of(st.floats(min_value=0.5, max_value=1e4), st.integers(1, 10**6)),
        "strict": st.booleans(),
    },
}
REQUIRED = {"run_tests": ("target",)}
unknown_keys = st.text(min_size=1, max_size=8).filter(
    lambda key: all(key not in known for known in VALID.values())
)


@st.composite
def missions(draw, mission_type=None, wild=None):
    kind = mission_type or draw(st.sampled_from(sorted(TEMPLATES)))
    wild = draw(st.booleans()) if wild is None else wild
    known = VALID[kind]
    keys = set(draw(st.lists(st.sampled_from(sorted(known)), unique=True)))
    if not wild:
        keys |= set(REQUIRED.get(kind, ()))
    params = {
        key: draw(st.one_of(known[key], scalars) if wild else known[key]) for key in sorted(keys)
    }
    params |= draw(st.dictionaries(unknown_keys, scalars, max_size=2))
    return MissionSpec(kind, params)


def test_the_strategies_cover_every_template():
    assert set(VALID) == set(TEMPLATES)


def _built_or_refused(mission):
    try:
        return build_workflow(mission)
    except StepLimitExceeded:
        assert mission.params.get("strict") is True
    except MissionParamError as exc:
        assert exc.param in mission.params or exc.param == "target"
    return None


@PROPERTY_SETTINGS
@given(missions())
def test_limits_always_hold_and_the_envelope_passes(mission):
    workflow = _built_or_refused(mission)
    if workflow is None:
        return
    assert 0 < len(workflow.steps) <= MAX_STEPS
    assert sum(step.kind == "human" for step in workflow.steps) <= MAX_HUMAN_STEPS
    assert envelope_problems(workflow) == []
    validate_envelope(workflow)
    kept = [step.id for step in workflow.steps]
    for index, step in enumerate(workflow.steps):
        assert set(step.depends_on) <= set(kept[:index])  # closed, in dependency order
    dropped = workflow.meta("dropped_steps")
    assert workflow.meta("truncated") == bool(dropped)
    assert workflow.meta("requested_steps") == len(kept) + len(dropped)
    assert not set(dropped) & set(kept)
    assert workflow.meta("params") == tuple(sorted(mission.params.items()))
    assert schema_issues("workstream.v1.json", workflow_to_plan(workflow)) == []


@PROPERTY_SETTINGS
@given(st.sampled_from(sorted(TEMPLATES)).flatmap(missions), st.randoms(use_true_random=False))
def test_equal_missions_hash_equal(mission, random):
    items = list(mission.params.items())
    random.shuffle(items)
    twin = MissionSpec(mission.type, dict(items))
    assert twin == mission and mission_hash(twin) == mission_hash(mission)
    first, second = _built_or_refused(mission), _built_or_refused(twin)
    if first is None:
        assert second is None
        return
    assert first.canonical_json() == second.canonical_json()
    assert first.workflow_hash() == second.workflow_hash()


@PROPERTY_SETTINGS
@given(st.data())
def test_different_params_hash_differently(data):
    kind = data.draw(st.sampled_from(sorted(TEMPLATES)))
    one = data.draw(missions(kind))
    other = data.draw(missions(kind))
    if canonical_json(one.to_json()) == canonical_json(other.to_json()):
        assert mission_hash(one) == mission_hash(other)
        return
    assert mission_hash(one) != mission_hash(other)
    first, second = _built_or_refused(one), _built_or_refused(other)
    if first is not None and second is not None:
        assert first.workflow_hash() != second.workflow_hash()


@PROPERTY_SETTINGS
@given(
    checks=st.integers(min_value=0, max_value=50),
    review=st.one_of(st.booleans(), st.integers(min_value=0, max_value=50)),
)
def test_any_daily_loop_request_is_truncated_or_refused_in_strict_mode(checks, review):
    params = {"checks": checks, "review": review}
    requested = 1 + checks + 1 + int(review)
    humans_requested = 1 + int(review)
    workflow = build_workflow(MissionSpec("daily_loop", params))
    over = requested > MAX_STEPS or humans_requested > MAX_HUMAN_STEPS
    assert workflow.meta("truncated") is over
    assert workflow.meta("requested_steps") == requested
    try:
        strict = build_workflow(MissionSpec("daily_loop", params | {"strict": True}))
    except StepLimitExceeded as exc:
        assert over
        assert exc.dropped == workflow.meta("dropped_steps")
    else:
        assert not over
        assert [s.id for s in strict.steps] == [s.id for s in workflow.steps]


@PROPERTY_SETTINGS
@given(st.text(min_size=1, max_size=15).filter(lambda name: name not in TEMPLATES))
def test_unknown_types_are_always_refused(name):
    try:
        build_workflow(MissionSpec(name, {}))
    except AntiFailurePlanningError as exc:
        assert "supported types: daily_loop, run_tests" in str(exc)
    else:
        raise AssertionError(f"{name!r} was planned")
