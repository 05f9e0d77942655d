"""The project's tools, not orchestrate's: which python a task's code, gates and PATH use.

A plan's ``python`` (task, workstream or bundle) names an interpreter or a virtualenv; without
one a task uses its project's ``.venv``, else the ``python3`` on PATH. Real virtualenvs are made
here (``python -m venv --without-pip``: a second, foreign interpreter in a second); a warm worker
really runs in one, which has none of orchestrate's dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.gates import check_spec, ruff_executable
from adapters.pool import CallSpec
from adapters.tools import PythonAdapter, ShellAdapter, task_environment
from domain.plan import AcceptanceCheck, TaskSpec
from planning.errors import PlanError
from planning.loader import load_plan
from tests.test_worker_pool import make_pool, pool, project, run  # noqa: F401 - fixtures

RUNTIME_BIN = os.path.dirname(sys.executable)


def make_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    return where


@pytest.fixture(scope="module")
def foreign_venv(tmp_path_factory) -> Path:
    """A virtualenv of its own: no psutil, no pykka, no orchestrate."""
    return make_venv(tmp_path_factory.mktemp("foreign") / "venv")


def shell_task(tmp_path: Path, **fields) -> dict:
    return {"id": "t", "tool": "shell", "command": "true", **fields}


def write(tmp_path: Path, document: dict, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def path_of(spec_env) -> list[str]:
    return dict(spec_env)["PATH"].split(os.pathsep)


# -- which interpreter ------------------------------------------------------------------------------
def test_a_projects_dot_venv_is_the_default_found_from_the_task_cwd_up_to_the_git_root(tmp_path, foreign_venv):
    repo = tmp_path / "repo"
    (repo / "src" / "deep").mkdir(parents=True)
    (repo / ".git").mkdir()
    (repo / ".venv").symlink_to(foreign_venv, target_is_directory=True)
    plan = load_plan(write(repo, {"id": "w", "tasks": [shell_task(tmp_path, cwd="src/deep")]}, "ci/plan.json"))
    assert plan.tasks[0].python == str(repo / ".venv" / "bin" / "python")


def test_a_dot_venv_above_the_git_root_is_not_the_projects(tmp_path, foreign_venv):
    (tmp_path / ".venv").symlink_to(foreign_venv, target_is_directory=True)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    plan = load_plan(write(repo, {"id": "w", "tasks": [shell_task(tmp_path)]}))
    assert plan.tasks[0].python == (shutil.which("python3") or sys.executable)


def test_a_repository_without_a_venv_uses_the_one_of_the_project_holding_the_plan(tmp_path, foreign_venv):
    (tmp_path / ".venv").symlink_to(foreign_venv, target_is_directory=True)
    (tmp_path / "sandbox" / ".git").mkdir(parents=True)
    plan = load_plan(write(tmp_path, {"id": "w", "repo": "../sandbox", "tasks": [shell_task(tmp_path)]}, "plan/p.json"))
    assert plan.tasks[0].python == str(tmp_path / ".venv" / "bin" / "python")


def test_without_a_project_venv_the_python3_on_path_is_used(tmp_path):
    (tmp_path / ".git").mkdir()
    plan = load_plan(write(tmp_path, {"id": "w", "tasks": [shell_task(tmp_path)]}))
    assert plan.tasks[0].python == shutil.which("python3")


def test_python_may_name_a_venv_or_an_interpreter_relative_to_the_plan_and_the_nearest_wins(tmp_path, foreign_venv):
    venv = foreign_venv
    document = {"python": sys.executable, "workstreams": [
        {"id": "a", "tasks": [shell_task(tmp_path)]},
        {"id": "b", "python": os.path.relpath(venv, tmp_path), "tasks": [
            shell_task(tmp_path), {"id": "u", "tool": "shell", "command": "true", "python": str(venv / "bin" / "python")}]},
    ]}
    plan = load_plan(write(tmp_path, document))
    assert [t.python for t in plan.tasks] == [sys.executable, str(venv / "bin" / "python"), str(venv / "bin" / "python")]


def test_a_missing_or_unusable_interpreter_is_refused_at_load_with_its_file_and_path(tmp_path):
    (tmp_path / "not-a-venv").mkdir()
    (tmp_path / "script").write_text("")
    document = {"python": "nowhere", "workstreams": [{"id": "a", "python": "not-a-venv", "tasks": [
        {"id": "t", "tool": "shell", "command": "true", "python": "script"}]}]}
    with pytest.raises(PlanError) as caught:
        load_plan(write(tmp_path, document))
    problems = {(issue.json_path, issue.message.split(" ", 1)[0]) for issue in caught.value.issues}
    messages = "\n".join(issue.message for issue in caught.value.issues)
    assert {path for path, _ in problems} == {"$.python", "$.workstreams[0].python", "$.workstreams[0].tasks[0].python"}
    assert f"no interpreter or virtualenv at {tmp_path / 'nowhere'}" in messages
    assert "without bin/python, so not a virtualenv (make one with: python3 -m venv" in messages
    assert f"{tmp_path / 'script'} is not executable" in messages


def test_an_executable_that_is_not_a_python_is_refused_rather_than_passing_every_gate(tmp_path):
    with pytest.raises(PlanError) as caught:
        load_plan(write(tmp_path, {"id": "w", "python": "/bin/true", "tasks": [shell_task(tmp_path)]}))
    assert caught.value.issues[0].json_path == "$.python"
    assert "/bin/true does not look like a python interpreter" in caught.value.issues[0].message


def test_validate_names_a_missing_interpreter_and_exits_2(orchestrate, tmp_path):
    write(tmp_path, {"id": "w", "tasks": [shell_task(tmp_path, python=".venv")]})
    result = orchestrate("validate", "plan.json")
    assert result.code == 2 and "Traceback" not in result.err
    assert f"plan.json: $.tasks[0].python: no interpreter or virtualenv at {tmp_path / '.venv'}" in result.err


# -- what uses it -----------------------------------------------------------------------------------
def test_shell_tasks_get_their_venv_first_on_path_and_never_orchestrates(tmp_path, foreign_venv):
    interpreter = str(foreign_venv / "bin" / "python")
    in_venv = TaskSpec("w", "t", "shell", command="python -V", cwd=str(tmp_path), python=interpreter)
    assert path_of(task_environment(in_venv))[0] == str(foreign_venv / "bin")
    system = TaskSpec("w", "t", "shell", command="true", cwd=str(tmp_path), python="/usr/bin/python3")
    assert path_of(task_environment(system)) == os.environ["PATH"].split(os.pathsep)
    if RUNTIME_BIN not in os.environ["PATH"].split(os.pathsep):
        assert RUNTIME_BIN not in path_of(task_environment(system))
    # A plain-words command is started directly: the program is the venv's.
    assert ShellAdapter().process_spec(in_venv, "x.log").argv[0] == str(foreign_venv / "bin" / "python")


def test_gates_and_fresh_interpreter_python_tasks_use_the_tasks_interpreter(tmp_path, foreign_venv):
    interpreter = str(foreign_venv / "bin" / "python")
    task = TaskSpec("w", "t", "python", callable="m:f", cwd=str(tmp_path), python=interpreter)
    assert check_spec(task, AcceptanceCheck(kind="pytest"), "x.log").argv[:3] == (interpreter, "-m", "pytest")
    assert check_spec(task, AcceptanceCheck(kind="import", modules=("m",)), "x.log").argv[0] == interpreter
    assert PythonAdapter().process_spec(task, "x.log").argv[0] == interpreter
    assert PythonAdapter().call_spec(task, "x.log").python == interpreter
    # Steps orchestrate builds itself (no python) keep the runtime's own interpreter.
    assert PythonAdapter().call_spec(TaskSpec("w", "t", "python", callable="m:f"), "x.log").python == sys.executable


def test_ruff_is_the_projects_when_its_venv_has_one_else_orchestrates(tmp_path):
    venv = make_venv(tmp_path / "venv")
    assert ruff_executable(str(venv / "bin" / "python")) == ruff_executable()
    project_ruff = venv / "bin" / "ruff"
    project_ruff.write_text("#!/bin/sh\nexit 0\n")
    project_ruff.chmod(0o755)
    assert ruff_executable(str(venv / "bin" / "python")) == str(project_ruff)


def test_a_warm_worker_runs_in_a_foreign_interpreter_that_lacks_orchestrates_dependencies(
        pool, project, foreign_venv):  # noqa: F811 - fixtures
    interpreter = str(foreign_venv / "bin" / "python")
    (project / "probe.py").write_text(
        "import importlib.util, sys\n\n\ndef probe():\n"
        "    return {'python': sys.executable, 'prefix': sys.prefix,\n"
        "            'psutil': importlib.util.find_spec('psutil') is not None}\n")
    task = run(pool, project, "probe:probe", python=interpreter)
    assert task.result().exit_code == 0, task.output()
    found = json.loads(Path(str(task.log) + ".result.json").read_text())
    assert found == {"python": interpreter, "prefix": str(foreign_venv), "psutil": False}
    # The next task of the runtime's own interpreter gets a worker of its own.
    ours = run(pool, project, "probe:probe")
    assert ours.pid != task.pid
    assert json.loads(Path(str(ours.log) + ".result.json").read_text())["psutil"] is True


def test_a_python_task_whose_interpreter_vanished_fails_saying_which(pool, project, tmp_path):  # noqa: F811
    (project / "probe.py").write_text("def probe():\n    return 1\n")
    task = run(pool, project, "probe:probe", python=str(tmp_path / "gone" / "bin" / "python"))
    result = task.result()
    assert result.outcome == "spawn_error"
    assert f"the task's python interpreter {tmp_path / 'gone' / 'bin' / 'python'} does not exist" in result.error


def test_call_specs_default_to_the_runtimes_interpreter():
    assert CallSpec("m:f", (), (), "/", (), "x.log").python == sys.executable


@pytest.mark.parametrize("name", ["pyworker.py", "pycall.py"])
def test_the_files_a_foreign_interpreter_runs_import_only_the_standard_library(name):
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "adapters" / name).read_text())
    imported = {alias.name.partition(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.partition(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)
