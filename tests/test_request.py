"""ExecutionRequest building, its identity, and schema validation of requests and run records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from planning import schemas
from planning.errors import PlanError, RequestInvalid, SchemaMissing
from planning.loader import load_plan
from domain.plan import Plan
from planning.request import (
    ExecutionRequest,
    build_request,
    select_workstreams,
    validate_request_json,
    validate_run_record,
)


def shell(task_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "tool": "shell", "command": "true", **fields}


BUNDLE = {
    "workstreams": [
        {
            "id": "docs",
            "depends_on": ["api"],
            "tasks": [{"id": "write", "tool": "human", "prompt": "Docs ok?"}],
        },
        {
            "id": "api",
            "depends_on": ["model"],
            "tasks": [shell("route", files=["src/api/*.py", "tests/*.py"])],
        },
        {"id": "model", "tasks": [shell("schema", files=["src/model.py", "tests/*.py"])]},
        {
            "id": "cli",
            "tasks": [
                {"id": "wire", "tool": "python", "callable": "m:f", "depends_on": ["lib/core"]}
            ],
        },
        {"id": "lib", "tasks": [shell("core")]},
        {"id": "extra", "tasks": [shell("lonely")]},
    ]
}


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(BUNDLE), encoding="utf-8")
    return path


@pytest.fixture
def plan(plan_path: Path) -> Plan:
    return load_plan(plan_path)


def run_record(request: ExecutionRequest, /, **changes: Any) -> dict[str, Any]:
    record = {
        "schema_version": 1,
        "run_id": "run-20240501-0001",
        "status": "pending",
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:01.250+00:00",
        "request_hash": request.request_hash,
        "request": request.to_json(),
        "workstreams": [{"ws_id": ws_id, "status": "pending"} for ws_id in request.workstreams],
    }
    return record | changes


def test_request_describes_the_whole_plan_in_dependency_order(plan: Plan) -> None:
    request = build_request(plan, concurrency=4)

    assert request.workstreams == ("model", "api", "docs", "lib", "cli", "extra")
    assert request.tools == ("human", "python", "shell")
    assert request.patterns == ("src/api/*.py", "src/model.py", "tests/*.py")
    assert request.task_count == 6
    assert request.concurrency == 4
    assert (request.plan_source, request.plan_base_dir, request.plan_hash) == (
        plan.source,
        plan.base_dir,
        plan.hash,
    )
    assert request.request_id == "req-" + request.request_hash[:16]
    assert request.schema_version == 1


def test_same_plan_loaded_twice_gives_the_same_request(plan_path: Path) -> None:
    first = build_request(load_plan(plan_path), concurrency=2)
    second = build_request(load_plan(plan_path), concurrency=2)

    assert first == second
    assert first.request_hash == second.request_hash


def test_different_options_or_selection_give_a_different_request_hash(plan: Plan) -> None:
    hashes = {
        build_request(plan, concurrency=1).request_hash,
        build_request(plan, concurrency=2).request_hash,
        build_request(plan, concurrency=1, workstream_ids=["api"]).request_hash,
    }

    assert len(hashes) == 3


def test_changed_plan_gives_a_different_request_hash(plan_path: Path) -> None:
    before = build_request(load_plan(plan_path), concurrency=1)
    changed = json.loads(plan_path.read_text())
    changed["workstreams"][2]["tasks"][0]["command"] = "make model"
    plan_path.write_text(json.dumps(changed))

    assert build_request(load_plan(plan_path), concurrency=1).request_hash != before.request_hash


def test_selecting_a_workstream_brings_its_dependencies_along(plan: Plan) -> None:
    request = build_request(plan, concurrency=1, workstream_ids=["docs"])

    assert request.workstreams == ("model", "api", "docs")
    assert request.task_count == 3
    assert request.tools == ("human", "shell")


def test_selection_follows_task_dependencies_into_other_workstreams(plan: Plan) -> None:
    sub = select_workstreams(plan, ["cli"])

    assert [ws.id for ws in sub.workstreams] == ["cli", "lib"]
    assert sub.hash == sub.content_hash() != plan.hash
    assert (sub.source, sub.base_dir) == (plan.source, plan.base_dir)


def test_unknown_workstream_is_refused_naming_it_and_the_known_ones(plan: Plan) -> None:
    with pytest.raises(PlanError) as caught:
        build_request(plan, concurrency=1, workstream_ids=["api", "nope", "zap"])

    messages = [issue.message for issue in caught.value.issues]
    known = "docs, api, model, cli, lib, extra"
    assert messages == [
        f"unknown workstream 'nope' (known: {known})",
        f"unknown workstream 'zap' (known: {known})",
    ]


def test_a_single_id_passed_as_a_string_is_one_workstream(plan: Plan) -> None:
    assert build_request(plan, concurrency=1, workstream_ids="api").workstreams == ("model", "api")


def test_empty_selection_is_refused(plan: Plan) -> None:
    with pytest.raises(PlanError, match="no workstream selected"):
        build_request(plan, concurrency=1, workstream_ids=[])


def test_concurrency_below_one_is_refused(plan: Plan) -> None:
    with pytest.raises(RequestInvalid) as caught:
        build_request(plan, concurrency=0)

    assert caught.value.issues == (
        ("$.options.concurrency", "'concurrency' must be an integer >= 1, got 0"),
    )


def test_request_json_round_trips(plan: Plan) -> None:
    request = build_request(plan, concurrency=3, workstream_ids=["api"])

    data = json.loads(json.dumps(request.to_json()))

    assert ExecutionRequest.from_json(data) == request


@pytest.mark.parametrize(
    ("change", "json_path", "fragment"),
    [
        (
            {"request_id": "abc"},
            "$.request_id",
            "must be 'req-' followed by 16 lower-case hex digits",
        ),
        ({"plan_hash": "xyz"}, "$.plan_hash", "must be a sha256 hex digest"),
        ({"workstreams": []}, "$.workstreams", "must be a non-empty list of workstream ids"),
        ({"task_count": "3"}, "$.task_count", "must be an integer >= 1, got '3'"),
        ({"surprise": True}, "$.surprise", "unknown property 'surprise'"),
    ],
)
def test_invalid_request_json_is_refused_with_path_and_reason(
    plan: Plan, change: dict[str, Any], json_path: str, fragment: str
) -> None:
    data = build_request(plan, concurrency=1).to_json() | change

    with pytest.raises(RequestInvalid) as caught:
        validate_request_json(data)

    ((path, message),) = caught.value.issues
    assert path == json_path
    assert fragment in message
    assert str(caught.value) == f"{path}: {message}"


def test_request_missing_a_field_is_refused(plan: Plan) -> None:
    data = build_request(plan, concurrency=1).to_json()
    del data["tools"]

    with pytest.raises(RequestInvalid, match=r"^\$: missing required property 'tools'$"):
        validate_request_json(data)


def test_valid_run_record_passes(plan: Plan) -> None:
    validate_run_record(run_record(build_request(plan, concurrency=1)))


@pytest.mark.parametrize(
    ("change", "json_path", "fragment"),
    [
        ({"status": "finished"}, "$.status", "must be one of pending, running, completed"),
        ({"run_id": "r-1"}, "$.run_id", "must be an id starting with 'run-'"),
        (
            {"created_at": "2024-05-01 12:00:00"},
            "$.created_at",
            "must be an ISO-8601 UTC timestamp",
        ),
        (
            {"updated_at": "2024-05-01T12:00:00+02:00"},
            "$.updated_at",
            "must be an ISO-8601 UTC timestamp",
        ),
        (
            {"workstreams": [{"ws_id": "api"}]},
            "$.workstreams[0]",
            "missing required property 'status'",
        ),
        ({"request_hash": "0" * 64}, "$.request_hash", "must equal $.request.request_hash"),
    ],
)
def test_invalid_run_record_is_refused_with_path_and_reason(
    plan: Plan, change: dict[str, Any], json_path: str, fragment: str
) -> None:
    record = run_record(build_request(plan, concurrency=1), **change)

    with pytest.raises(RequestInvalid) as caught:
        validate_run_record(record)

    ((path, message),) = caught.value.issues
    assert path == json_path
    assert fragment in message


def test_run_record_checks_the_request_it_embeds(plan: Plan) -> None:
    request = build_request(plan, concurrency=1)
    record = run_record(request, request=request.to_json() | {"options": {"concurrency": 0}})

    with pytest.raises(RequestInvalid) as caught:
        validate_run_record(record)

    assert caught.value.issues[0][0] == "$.request.options.concurrency"


@pytest.fixture
def fresh_schema_cache() -> Iterator[None]:
    caches = (schemas.load_schema, schemas.validator, schemas._fast_validator)
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


def test_missing_schema_raises_schema_missing(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_schema_cache: None
) -> None:
    monkeypatch.setattr(schemas, "schema_dir", lambda: tmp_path / "no-schemas")

    with pytest.raises(SchemaMissing, match=r"execution_request\.v1\.json is missing"):
        build_request(plan, concurrency=1)


def test_schema_dir_is_the_repository_schema_directory() -> None:
    assert (schemas.schema_dir() / "workstream.v1.json").is_file()
