"""A real project's CI through orchestrate (issue 15, acceptance 4).

A small pure-Python package in its own git repository, with its own ``.venv`` holding a
dependency orchestrate does not need (toolz) and pytest; a plan with a lint step
that may fail (and does), four test shards from one ``matrix``, a python task and a build — and
not one interpreter path written in it. Everything really runs: the virtualenv is made with
``python -m venv`` and ``pip install`` (once per session; each project links to it), the shards
are pytest in that virtualenv, the build is ``pip wheel`` of the project's own pip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ledger

# Not a dependency of orchestrate (the bench extra's dask brings it beside orchestrate, so the
# test proves the interpreter by where the python task finds it, not by its absence here).
DEPENDENCY = "toolz"

PLAN = {
    "workstreams": [{
        "id": "ci",
        "tasks": [
            {"id": "lint", "tool": "shell", "command": "true", "allow_failure": True,
             "acceptance": [{"kind": "ruff", "args": ["tally"]}]},
            {"id": "tests", "tool": "shell", "matrix": {"shard": [1, 2, 3, 4]},
             "command": "echo shard ${matrix.shard} >> ran.log && "
                        "python -m pytest -q -p no:cacheprovider tests/test_part${matrix.shard}.py"},
            {"id": "check", "tool": "python", "callable": "tally.report:where"},
            {"id": "build", "tool": "shell", "depends_on": ["tests", "lint", "check"],
             "command": "echo build >> ran.log && pip wheel --no-deps --no-build-isolation -q -w dist .",
             "acceptance": [{"kind": "import", "modules": ["tally", "toolz"]}]},
        ],
    }],
}

PACKAGE = {
    "pyproject.toml": '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
                      '[project]\nname = "tally"\nversion = "0.1.0"\ndependencies = ["toolz"]\n\n'
                      '[tool.setuptools]\npackages = ["tally"]\n',
    # The unused import is what lint finds (ruff's F401).
    "tally/__init__.py": "import os\n\nfrom toolz import frequencies\n\n\ndef tally(words):\n"
                         "    return dict(sorted(frequencies(words).items()))\n",
    "tally/report.py": "import sys\n\nimport toolz\n\n\ndef where():\n"
                       "    return {'python': sys.executable, 'toolz': toolz.__file__}\n",
    ".gitignore": ".venv\nran.log\ndist/\nbuild/\n*.egg-info/\n__pycache__/\n",
}
for shard in range(1, 5):
    PACKAGE[f"tests/test_part{shard}.py"] = (
        "import toolz\n\nfrom tally import tally\n\n\n"
        f"def test_part{shard}():\n    assert tally(['a'] * {shard} + ['b']) == {{'a': {shard}, 'b': 1}}\n"
        f"    assert toolz.first([{shard}]) == {shard}\n"
    )
BROKEN_SHARD = 3


@pytest.fixture(scope="session")
def project_venv(tmp_path_factory) -> Path:
    """A virtualenv with toolz, pytest and wheel (the build's), made once per session
    (``python -m venv`` + pip)."""
    venv = tmp_path_factory.mktemp("project-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", DEPENDENCY, "pytest", "wheel"],
                   check=True, timeout=600, capture_output=True)
    return venv


@pytest.fixture
def project(tmp_path, project_venv) -> Path:
    """The package as a git repository, its ``.venv`` the session's virtualenv."""
    root = tmp_path / "tally"
    for name, text in PACKAGE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / ".venv").symlink_to(project_venv, target_is_directory=True)
    (root / "ci.json").write_text(json.dumps(PLAN, indent=2))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "tally"]):
        subprocess.run([*git, *command], cwd=root, check=True, timeout=60)
    return root


def runs_of(root: Path) -> dict[str, int]:
    """How often each step really ran (each appends to ran.log as it starts)."""
    counts: dict[str, int] = {}
    log = root / "ran.log"
    for line in (log.read_text().splitlines() if log.exists() else []):
        counts[line] = counts.get(line, 0) + 1
    return counts


def break_shard(root: Path) -> None:
    test = root / "tests" / f"test_part{BROKEN_SHARD}.py"
    test.write_text(test.read_text() + "\n\ndef test_broken():\n    assert False, 'shard broken on purpose'\n")


def fix_shard(root: Path) -> None:
    (root / "tests" / f"test_part{BROKEN_SHARD}.py").write_text(PACKAGE[f"tests/test_part{BROKEN_SHARD}.py"])


def test_a_projects_ci_runs_with_the_projects_own_interpreter_and_no_interpreter_path_in_the_plan(
        orchestrate, project):
    plan_text = (project / "ci.json").read_text()
    assert ".venv" not in plan_text and "bin/python" not in plan_text and sys.executable not in plan_text

    result = orchestrate("run", "ci.json", cwd=project, timeout=600)

    assert result.code == 0, result.out + result.err
    assert "✗ ci/lint  FAILED (allowed)  acceptance check 'ruff tally' failed: exit code 1: lint violations" in result.out
    assert "completed in" in result.out and "6 completed, 1 failed (allowed)" in result.out
    for shard in range(1, 5):
        assert f"✓ ci/tests[shard={shard}]" in result.out
    assert runs_of(project) == {"shard 1": 1, "shard 2": 1, "shard 3": 1, "shard 4": 1, "build": 1}
    assert list((project / "dist").glob("tally-0.1.0-*.whl")), "the build made no wheel"
    with ledger(project) as db:
        run = db.execute("SELECT status FROM runs").fetchone()
        states = dict(db.execute("SELECT task_key, state FROM tasks").fetchall())
        (returned,) = db.execute("SELECT result_json FROM step_attempts WHERE step_name = 'ci/check'").fetchone()
    assert run["status"] == "completed"
    assert states["ci/lint"] == "FAILED" and states["ci/build"] == "COMPLETED"
    # The python task ran in a warm worker of the project's interpreter, found by the plan's
    # default (the project's .venv), with the project's toolz.
    where = json.loads(returned)
    assert where["python"] == str(project / ".venv" / "bin" / "python")
    assert where["toolz"].startswith(str(project / ".venv"))
    shown = orchestrate("runs", "show", json.loads(orchestrate("runs", "--json", cwd=project).out)[0]["run_id"],
                        cwd=project)
    assert "ci/lint            FAILED (allowed)" in shown.out


def test_a_broken_shard_fails_the_run_and_blocks_the_build_while_lint_still_may_fail(orchestrate, project):
    break_shard(project)

    result = orchestrate("run", "ci.json", cwd=project, timeout=600)

    assert result.code == 1, result.out + result.err
    assert f"✗ ci/tests[shard={BROKEN_SHARD}]  FAILED  exit code 1" in result.out
    assert "⊘ ci/build  BLOCKED" in result.out
    assert "run " in result.out and " partial in " in result.out
    assert "blocked: ci/build" in result.out
    assert runs_of(project) == {"shard 1": 1, "shard 2": 1, "shard 3": 1, "shard 4": 1}


def test_a_broken_shard_then_fixed_reruns_only_that_shard_and_its_dependants_with_run_plan(orchestrate, project):
    """Acceptance 4's second half: ``run PLAN`` continues the plan's last, unfinished run and
    runs only what did not complete there (the fixed shard, and the build it blocked)."""
    break_shard(project)
    first = orchestrate("run", "ci.json", cwd=project, timeout=600)
    assert first.code == 1, first.out + first.err
    fix_shard(project)

    second = orchestrate("run", "ci.json", cwd=project, timeout=600)

    assert second.code == 0, second.out + second.err
    ran = runs_of(project)
    assert ran == {"shard 1": 1, "shard 2": 1, f"shard {BROKEN_SHARD}": 2, "shard 4": 1, "build": 1}, ran
    assert list((project / "dist").glob("tally-0.1.0-*.whl"))
