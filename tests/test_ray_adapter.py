"""The ray adapter's decisions, without a cluster: how a task becomes a Ray submission, what a
remote end means, and how its configuration and task resources are validated."""

from __future__ import annotations

import json

import pytest

from adapters import ray_remote
from adapters.ray_bridge import gcs_endpoint, inline_inputs
from adapters.ray_client import remote_result
from adapters.ray_tasks import RaySettings, ray_options, remote_spec
from domain.errors import ErrorClass
from domain.outcomes import Evidence, ProcessOutcome, ProcessResult, tool_verdict
from domain.plan import Resources, TaskSpec
from domain.results import ResultRef
from domain.routing import RoutingTable
from domain.states import TaskState
from planning.errors import PlanError
from planning.loader import load_plan
from planning.router_config import load_router_config


def task(tool: str = "shell", resources: Resources | None = None, **fields) -> TaskSpec:
    if tool == "shell":
        fields.setdefault("command", "echo hi")
    return TaskSpec("w", "t", tool, resources=resources, cwd="/srv/project", **fields)


def test_a_tasks_own_resources_win_over_the_adapters_defaults_and_custom_ones_merge():
    defaults = Resources(num_cpus=1, memory_mb=256, custom=(("pool", 1.0), ("nodeA", 1.0)))
    asked = Resources(num_cpus=2, num_gpus=0, custom=(("nodeA", 0.5),))
    assert ray_options(task(resources=asked), defaults) == {
        "num_cpus": 2, "num_gpus": 0, "memory": 256 * 1024 * 1024, "resources": {"pool": 1.0, "nodeA": 0.5}}


def test_a_task_that_asks_nothing_gets_the_defaults_and_no_defaults_leave_rays_own():
    assert ray_options(task(), Resources(num_cpus=0.5)) == {"num_cpus": 0.5}
    assert ray_options(task(), Resources()) == {}
    assert ray_options(task(resources=Resources(memory_mb=1.5)), Resources())["memory"] == int(1.5 * 1024 * 1024)


def test_a_shell_task_runs_its_command_with_its_own_environment_and_the_attempt_markers():
    spec = remote_spec(task(env=(("K", "V"),), timeout_s=3.0, memory_limit_mb=64.0), (("ORCHESTRATE_TASK", "w/t"),))
    assert spec["kind"] == "shell" and spec["command"] == "echo hi" and spec["cwd"] == "/srv/project"
    assert spec["env"] == [["K", "V"], ["ORCHESTRATE_TASK", "w/t"]]
    assert (spec["timeout_s"], spec["memory_limit_mb"]) == (3.0, 64.0)
    json.dumps(spec)  # it travels as JSON to the bridge


def test_a_python_task_carries_its_callable_and_the_pycall_source_to_the_node():
    spec = remote_spec(task("python", callable="pkg.mod:fn", args=(1,), kwargs=(("k", 2),)), ())
    assert (spec["callable"], spec["args"], spec["kwargs"]) == ("pkg.mod:fn", [1], {"k": 2})
    assert "def call(request" in spec["pycall_source"]


def test_a_task_carries_its_interpreter_and_its_inputs_inline_or_as_the_path_of_a_large_one():
    inputs = (("big", ResultRef(path="/state/results/r/w/up.1.json")), ("small", ResultRef(text='{"n": 1}')),
              ("none", ResultRef()))
    spec = remote_spec(task("python", callable="m:f", python="/srv/venv/bin/python"), (), inputs)
    assert (spec["task"], spec["python"]) == ("w/t", "/srv/venv/bin/python")
    assert spec["inputs"] == [["big", None, "/state/results/r/w/up.1.json"], ["small", '{"n": 1}', None],
                              ["none", "null", None]]
    # A step orchestrate built names no interpreter: the node runs it with its own.
    assert remote_spec(task(), ())["python"] is None


def test_the_bridge_sends_a_large_results_content_because_the_node_cannot_read_the_runtimes_files(tmp_path):
    kept = tmp_path / "up.1.json"
    kept.write_text('{"pad": "' + "x" * 100_000 + '"}')
    spec = {"kind": "shell", "inputs": [["big", None, str(kept)], ["small", "[1, 2]", None]]}
    assert inline_inputs(spec)["inputs"] == [["big", kept.read_text()], ["small", "[1, 2]"]]
    assert spec["inputs"][0] == ["big", None, str(kept)]  # the submitted spec is left as it was

    kept.unlink()
    with pytest.raises(OSError, match=r"could not read input 'big', the result kept in .*up\.1\.json: No such file"):
        inline_inputs(spec)


def test_on_the_node_a_python_task_reads_each_input_from_a_file_and_a_shell_task_one_json_object(tmp_path):
    inputs = [["a", '{"k": [1, 2]}'], ["b", "null"]]
    python_inputs = ray_remote._python_inputs(str(tmp_path), inputs)
    assert [name for name, text, _ in python_inputs] == ["a", "b"] and all(text is None for _, text, _ in python_inputs)
    # Exactly what pycall passes to the callable as keyword arguments.
    from adapters.pycall import input_values
    assert input_values(python_inputs) == {"a": {"k": [1, 2]}, "b": None}
    with open(ray_remote._shell_inputs(str(tmp_path), inputs)) as handle:
        assert json.load(handle) == {"a": {"k": [1, 2]}, "b": None}


def test_on_the_node_a_virtualenvs_bin_goes_first_on_path_and_nothing_of_the_workers_own(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = dict(ray_remote._environment({"env": [["K", "V"]], "python": str(venv / "bin" / "python")}))
    assert (env["PATH"], env["K"]) == (f"{venv / 'bin'}:/usr/bin:/bin", "V")
    for python in ("/usr/bin/python3", None):  # not a virtualenv's; a step orchestrate built
        assert dict(ray_remote._environment({"env": [], "python": python}))["PATH"] == "/usr/bin:/bin"


def test_a_tool_a_ray_node_cannot_run_is_refused_by_name():
    with pytest.raises(ValueError, match="runs shell and python tasks, not 'human'"):
        remote_spec(TaskSpec("w", "t", "human", prompt="ok?"), ())


@pytest.mark.parametrize(("event", "outcome", "error"), [
    ({"outcome": "exited", "exit_code": 0}, ProcessOutcome.EXITED, ""),
    ({"outcome": "timeout"}, ProcessOutcome.TIMEOUT, ""),
    ({"outcome": "lost", "error": "NodeDiedError: node died"}, ProcessOutcome.LOST, "NodeDiedError: node died"),
    ({"outcome": "spawn_error_cwd", "error": "No such file or directory: /x"}, ProcessOutcome.SPAWN_ERROR,
     "No such file or directory: /x (the task's cwd does not exist on the Ray node)"),
    ({"outcome": "bogus"}, ProcessOutcome.LOST, "unknown outcome 'bogus' from the Ray bridge"),
])
def test_a_bridge_end_event_becomes_a_process_result_with_no_local_pid(event, outcome, error):
    result = remote_result(event)
    assert (result.outcome, result.error, result.pid) == (outcome, error, -1)


@pytest.mark.parametrize("outcome", ["spawn_error_python", "spawn_error_cwd"])
def test_an_interpreter_or_cwd_missing_on_the_node_is_the_plans_fault_not_the_clusters(outcome):
    result = remote_result({"outcome": outcome, "error": "task w/t: its python /v/bin/python is not an interpreter"})
    assert (result.outcome, result.plan_fault) == (ProcessOutcome.SPAWN_ERROR, True)
    verdict = tool_verdict(result)
    assert (verdict.error_class, verdict.evidence) == (ErrorClass.BAD_INPUT, Evidence.WORKED)
    assert verdict.message.startswith("could not start: task w/t: its python /v/bin/python")
    # Anything else that kept it from starting on the node is the tool's (retried, counted).
    assert tool_verdict(remote_result({"outcome": "spawn_error", "error": "EAGAIN"})).error_class is ErrorClass.TOOL_ERROR


def test_a_lost_cluster_or_node_is_a_tool_failure_that_counts_against_the_adapter():
    lost = ProcessResult(-1, 0.0, None, None, ProcessOutcome.LOST, 1.0, 0, 0.0, error="NodeDiedError: gone")
    verdict = tool_verdict(lost, last_line="half a line the task printed")
    assert (verdict.state, verdict.error_class, verdict.message) == (
        TaskState.FAILED, ErrorClass.TOOL_ERROR, "lost: NodeDiedError: gone")
    assert verdict.evidence is Evidence.BROKEN
    # A full local disk is not why a remote task was lost.
    assert tool_verdict(lost, full_disk="/state").error_class is ErrorClass.TOOL_ERROR


@pytest.mark.parametrize(("address", "endpoint"), [
    ("127.0.0.1:6379", ("127.0.0.1", 6379)), ("head.example:10001", ("head.example", 10001)),
    ("auto", None), ("host:port", None),
])
def test_the_bridge_probes_the_heads_host_and_port(address, endpoint):
    assert gcs_endpoint(address) == endpoint


def write(tmp_path, name, document):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_a_ray_adapter_serves_shell_and_python_tasks_and_reads_its_settings(tmp_path):
    config = load_router_config(write(tmp_path, "router_config.json", {"adapters": [
        {"name": "cluster", "type": "ray", "settings": {
            "address": "10.0.0.5:6379", "resources": {"num_cpus": 2, "custom": {"gpu-box": 1}},
            "runtime_env": {"env_vars": {"A": "1"}}}}]}))
    table = RoutingTable(config)
    assert table.route(task("shell")).chosen == table.route(task("python", callable="m:f")).chosen == "cluster"
    settings = RaySettings.of(config.adapter("cluster"))
    assert settings == RaySettings("10.0.0.5:6379", Resources(num_cpus=2.0, custom=(("gpu-box", 1.0),)),
                                   {"env_vars": {"A": "1"}})


@pytest.mark.parametrize(("settings", "path", "expected"), [
    (None, "$.adapters[0]", "missing required property 'settings'"),
    ({}, "$.adapters[0].settings", "missing required property 'address'"),
    ({"address": "localhost"}, "$.adapters[0].settings.address", "host:port"),
    ({"address": "h:1", "adress": "h:2"}, "$.adapters[0].settings.adress",
     "unknown property 'adress' (did you mean 'address'?)"),
    ({"address": "h:1", "resources": {"num_cpus": -1}}, "$.adapters[0].settings.resources.num_cpus", ">= 0"),
])
def test_a_ray_adapters_bad_settings_are_named_with_their_json_path(tmp_path, settings, path, expected):
    adapter = {"name": "cluster", "type": "ray", **({"settings": settings} if settings is not None else {})}
    with pytest.raises(PlanError) as raised:
        load_router_config(write(tmp_path, "router_config.json", {"adapters": [adapter]}))
    issues = raised.value.issues
    assert any(issue.json_path == path and expected in issue.message for issue in issues), issues


def test_task_resources_load_into_the_plan_and_bad_ones_are_named(tmp_path):
    good = write(tmp_path, "good.json", {"id": "w", "tasks": [
        {"id": "t", "tool": "shell", "command": "true",
         "resources": {"num_cpus": 2, "memory_mb": 512, "num_gpus": 0, "custom": {"nodeB": 1}}}]})
    loaded = load_plan(good).tasks[0]
    assert loaded.resources == Resources(2.0, 512.0, 0.0, (("nodeB", 1.0),))
    assert TaskSpec.from_json(loaded.to_json()) == loaded

    bad = write(tmp_path, "bad.json", {"id": "w", "tasks": [
        {"id": "t", "tool": "shell", "command": "true", "resources": {"num_cpus": -1, "disk": 3}}]})
    with pytest.raises(PlanError) as raised:
        load_plan(bad)
    where = {issue.json_path: issue.message for issue in raised.value.issues}
    assert "$.tasks[0].resources.num_cpus" in where and ">= 0" in where["$.tasks[0].resources.num_cpus"]
    assert any("disk" in message for message in where.values())


def test_a_task_without_resources_keeps_the_plan_hash_it_had_before_resources_existed(tmp_path):
    plain = TaskSpec("w", "t", "shell", command="true")
    assert "resources" not in plain.to_json()


def test_a_ray_adapter_without_ray_installed_is_refused_with_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    from actors.runtime import AdapterUnavailable, _ray_bridge
    from domain.routing import AdapterInfo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    info = AdapterInfo("cluster", "ray", settings=(("address", "127.0.0.1:6379"),))
    with pytest.raises(AdapterUnavailable, match=r"adapter 'cluster': type 'ray' needs Ray: pip install 'orchestrate\[ray\]'"):
        _ray_bridge(info, tmp_path)


def test_a_bad_ray_setting_stops_the_run_before_anything_starts(orchestrate, write_plan, tmp_path):
    write(tmp_path, "router_config.json", {"adapters": [
        {"name": "cluster", "type": "ray", "settings": {"address": "127.0.0.1:6379", "resources": {"num_gpus": "two"}}}]})
    plan = write_plan({"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]})
    result = orchestrate("run", str(plan))
    assert result.code == 2, result.out + result.err
    assert "router_config.json: $.adapters[0].settings.resources.num_gpus" in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / ".state" / "logs").exists() or not list((tmp_path / ".state" / "logs").glob("run-*"))
