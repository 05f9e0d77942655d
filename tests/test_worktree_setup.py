"""Worktrees that are ready to work in: `setup` commands run once, `copy` brings git-ignored
files (a .env whose value must never leak), `link` shares a directory, and every live worktree
has a port block of its own.

The runs are real: `orchestrate run` as a subprocess, a real git repository, a real virtualenv
made by the set-up command (`pip install -e .` of a tiny package whose PEP 660 backend is in
the repository, so nothing is downloaded), and a stand-in agent CLI printing Claude Code's
result object.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from domain.ports import PortBlock, candidate_blocks
from tests.conftest import ledger

GIT = ["git", "-c", "user.name=Test Person", "-c", "user.email=person@example.invalid", "-c", "init.defaultBranch=main"]
SECRET = "sk-live-H16-9f3c2a7be1d04e55-TOPSECRET"

TINY_BACKEND = textwrap.dedent(
    '''
    """A PEP 660 backend of a few lines: an editable install is a .pth naming this directory."""
    import base64, hashlib, os, zipfile

    NAME, VERSION = "tinypkg", "0.1"
    DIST = f"{NAME}-{VERSION}.dist-info"


    def _line(path, data):
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{path},sha256={digest},{len(data)}"


    def get_requires_for_build_editable(config_settings=None):
        return []


    def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
        files = {
            f"{NAME}.pth": (os.path.abspath(os.path.dirname(__file__)) + "\\n").encode(),
            f"{DIST}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode(),
            f"{DIST}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
        }
        name = f"{NAME}-{VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
            for path, data in files.items():
                wheel.writestr(path, data)
            wheel.writestr(f"{DIST}/RECORD", "\\n".join([_line(p, d) for p, d in files.items()] + [f"{DIST}/RECORD,,"]))
        return name
    '''
)

PYPROJECT = textwrap.dedent(
    """
    [build-system]
    requires = []
    build-backend = "tiny_backend"
    backend-path = ["."]

    [project]
    name = "tinypkg"
    version = "0.1"
    """
)

# The stand-in agent: proves it runs in the prepared worktree (the venv's package imports, the
# .env is there, its port block is set) without ever printing the secret, then edits a file.
AGENT = textwrap.dedent(
    """
    import json, os, pathlib, subprocess, sys
    here = pathlib.Path.cwd()
    facts = {
        "cwd": str(here),
        "env_file": pathlib.Path(".env").is_file(),
        "port_base": os.environ.get("ORCHESTRATE_PORT_BASE"),
        "port_count": os.environ.get("ORCHESTRATE_PORT_COUNT"),
        "tinypkg": subprocess.run([".venv/bin/python", "-c", "import tinypkg; print(tinypkg.VALUE)"],
                                  capture_output=True, text=True).stdout.strip(),
    }
    pathlib.Path("facts.json").write_text(json.dumps(facts, sort_keys=True) + "\\n")
    print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "recorded the facts"}))
    """
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "tinypkg").mkdir(parents=True)
    (repo / "tinypkg" / "__init__.py").write_text("VALUE = 42\n")
    (repo / "pyproject.toml").write_text(PYPROJECT)
    (repo / "tiny_backend.py").write_text(TINY_BACKEND)
    (repo / ".gitignore").write_text(".env\n.venv/\n__pycache__/\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / ".env").write_text(f"API_KEY={SECRET}\n")
    (repo / "shared-cache").mkdir()
    (repo / "shared-cache" / "big.bin").write_text("cached\n")
    return repo


def agent_router(tmp_path: Path) -> Path:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    config = {"adapters": [
        {"name": "agent", "type": "agent", "settings": {"argv": [sys.executable, str(script), "{prompt}"],
                                                         "output": "json"}},
        {"name": "shell", "type": "shell"},
    ]}
    path = tmp_path / "router.json"
    path.write_text(json.dumps(config))
    return path


def every_text_of(tmp_path: Path, db: sqlite3.Connection) -> dict[str, str]:
    """Every log, patch and transition file under the state directory, and every row of every
    ledger table, as text keyed by where it came from."""
    texts: dict[str, str] = {}
    state = tmp_path / ".state"
    for path in state.rglob("*"):
        if path.is_file() and not path.is_symlink() and "worktrees" not in path.relative_to(state).parts:
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    tables = [row[0] for row in db.execute("select name from sqlite_master where type = 'table'")]
    assert {"runs", "tasks", "events", "step_attempts", "patch_history"} <= set(tables)
    for table in tables:
        for number, row in enumerate(db.execute(f'select * from "{table}"')):
            texts[f"{table}#{number}"] = " ".join(str(value) for value in tuple(row))
    return texts


def test_a_prepared_worktree_runs_the_agent_and_gates_and_the_secret_leaks_nowhere(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [{
        "id": "feature", "repo": "repo",
        "setup": ["python -m venv .venv && .venv/bin/pip install -q --no-deps --no-build-isolation --no-index -e ."],
        "copy": [".env"], "link": ["shared-cache"], "ports": 5,
        "tasks": [{"id": "facts", "tool": "agent", "prompt": "record the facts",
                   "acceptance": [{"name": "package importable", "command": ".venv/bin/python -c 'import tinypkg'"},
                                  {"name": "secret present", "command": "grep -q API_KEY= .env"},
                                  {"name": "cache linked", "command": "test -f shared-cache/big.bin"}]}],
    }]}))
    result = orchestrate("run", str(plan), "--router-config", str(agent_router(tmp_path)), timeout=300)
    assert result.code == 0, result.out + result.err
    assert SECRET not in result.out + result.err

    facts = json.loads((repo / "facts.json").read_text())  # merged into main
    assert "worktrees" in facts["cwd"], "the agent ran inside the worktree"
    assert facts["env_file"] is True and facts["tinypkg"] == "42"
    assert (int(facts["port_base"]), facts["port_count"]) >= (20000, "5")
    tracked = git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert ".env" not in tracked and "shared-cache" not in tracked and ".venv" not in " ".join(tracked)

    db = ledger(tmp_path)
    run_id = db.execute("select run_id from runs").fetchone()[0]
    setup_log = tmp_path / ".state" / "logs" / run_id / "feature" / "setup.log"
    assert "$ python -m venv .venv" in setup_log.read_text() and "[exit code 0]" in setup_log.read_text()
    events = [row[0] for row in db.execute("select event_type from events order by id")]
    assert events.index("WORKTREE_SETUP_DONE") < events.index("WORKTREE_READY") < events.index("TASK_STARTED")
    carried = json.loads(db.execute("select payload_json from events where event_type = 'WORKTREE_CARRIED'")
                         .fetchone()[0])
    assert carried == {"copied": [".env"], "linked": ["shared-cache"], "unmatched": []}

    texts = every_text_of(tmp_path, db)
    assert any("patches" in where for where in texts), "the patch files were searched"
    assert any(where.endswith("facts.log") for where in texts), "the task's log was searched"
    leaks = sorted(where for where, text in texts.items() if SECRET in text)
    assert leaks == []
    history = git(repo, "log", "-p", "--all")
    assert SECRET not in history and "API_KEY" not in history


def test_a_failing_setup_command_fails_the_workstream_naming_its_log(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [{
        "id": "feature", "repo": "repo", "setup": ["echo preparing", "echo 'no such tool' >&2; exit 7", "touch never"],
        "tasks": [{"id": "work", "tool": "shell", "command": "touch done.txt"}],
    }]}))
    result = orchestrate("run", str(plan))
    assert result.code == 1, result.out + result.err
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    setup_log = tmp_path / ".state" / "logs" / run_id / "feature" / "setup.log"
    assert f"its output is in {setup_log}" in result.out
    assert "exit code 7" in result.out
    text = setup_log.read_text()
    assert "preparing" in text and "no such tool" in text and "touch never" not in text
    assert not (repo / "done.txt").exists()
    db = ledger(tmp_path)
    assert db.execute("select status from workstreams").fetchone()[0] == "failed"
    assert db.execute("select count(*) from events where event_type = 'WORKTREE_SETUP_FAILED'").fetchone()[0] == 1


def test_setup_runs_once_per_worktree_even_when_the_run_is_resumed(tmp_path, orchestrate):
    make_repo(tmp_path)
    counter = tmp_path / "setups"
    flag = tmp_path / "go"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [{
        "id": "feature", "repo": "repo", "setup": [f"echo once >> {counter}"],
        "tasks": [{"id": "work", "tool": "shell", "command": f"test -f {flag} && touch done.txt"}],
    }]}))
    assert orchestrate("run", str(plan)).code == 1
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    flag.touch()
    resumed = orchestrate("execute", "--run", run_id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert counter.read_text() == "once\n"


def test_five_parallel_worktrees_get_port_blocks_that_never_overlap(tmp_path, orchestrate):
    make_repo(tmp_path)
    seen = tmp_path / "ports"
    seen.mkdir()
    # Each workstream records its block and holds its worktree until all five have recorded
    # theirs, so the five are live at the same time.
    record = (f"echo $ORCHESTRATE_PORT_BASE $ORCHESTRATE_PORT_COUNT > {seen}/$ORCHESTRATE_TASK_NAME; "
              f"i=0; while [ $(ls {seen} | wc -l) -lt 5 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done")
    workstreams = [{"id": f"ws{n}", "repo": "repo", "ports": 7, "tasks": [
        {"id": "hold", "tool": "shell", "command": record.replace("$ORCHESTRATE_TASK_NAME", f"ws{n}")}]}
        for n in range(5)]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": workstreams}))
    result = orchestrate("run", str(plan), "-j", "5", timeout=300)
    assert result.code == 0, result.out + result.err
    blocks = [PortBlock(*map(int, (seen / f"ws{n}").read_text().split())) for n in range(5)]
    assert all(block.count == 7 for block in blocks)
    for index, block in enumerate(blocks):
        for other in blocks[index + 1:]:
            assert not block.overlaps(other), (block, other)


def test_candidate_blocks_skip_every_held_block_and_stay_on_the_grid():
    held = [PortBlock(20000, 10), PortBlock(20015, 3), PortBlock(20040, 10)]
    first = list(candidate_blocks(held, 10, 20000, 20080))
    assert first == [PortBlock(20020, 10), PortBlock(20030, 10), PortBlock(20050, 10),
                     PortBlock(20060, 10), PortBlock(20070, 10)]
    assert all(not c.overlaps(h) for c in first for h in held)
    assert list(candidate_blocks([PortBlock(20000, 5)], 5, 20000, 20010)) == [PortBlock(20005, 5)]
    assert list(candidate_blocks([PortBlock(20000, 10)], 5, 20000, 20010)) == []


def test_candidate_blocks_refuse_impossible_sizes():
    import pytest

    with pytest.raises(ValueError, match="at least 1"):
        next(candidate_blocks([], 0))
    with pytest.raises(ValueError, match="does not fit"):
        next(candidate_blocks([], 100, 20000, 20050))


def test_a_copied_file_git_does_not_ignore_is_still_kept_out_of_patches_and_commits(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    (repo / ".gitignore").write_text(".venv/\n")  # .env is NOT ignored here
    git(repo, "commit", "-qam", "ignore less")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [{
        "id": "feature", "repo": "repo", "copy": [".env"],
        "tasks": [{"id": "one", "tool": "shell", "command": "grep -q API_KEY .env && echo one > one.txt"},
                  {"id": "two", "tool": "shell", "command": "echo two > two.txt", "depends_on": ["one"]}],
    }]}))
    result = orchestrate("run", str(plan))
    assert result.code == 0, result.out + result.err
    assert (repo / "one.txt").exists() and (repo / "two.txt").exists()
    assert ".env" not in git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert SECRET not in git(repo, "log", "-p", "--all")
    db = ledger(tmp_path)
    files = [json.loads(row[0]) for row in db.execute("select files_json from patch_history")]
    assert sorted(f["path"] for each in files for f in each) == ["one.txt", "two.txt"]
    assert [where for where, text in every_text_of(tmp_path, db).items() if SECRET in text] == []


def test_bad_preparation_fields_are_refused_naming_file_path_and_what_was_expected(tmp_path, orchestrate):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"budget_usd": -1, "workstreams": [
        {"id": "w", "repo": ".", "copy": ["../secret"], "link": ["/abs"], "ports": -3, "on_conflict": "merge",
         "tasks": [{"id": "t", "tool": "shell", "command": "true", "max_cost_usd": -2}]},
        {"id": "v", "setup": ["make"], "tasks": [{"id": "t", "tool": "shell", "command": "true"}]}]}))
    result = orchestrate("validate", str(plan))
    assert result.code == 2
    for expected in (
        "$.budget_usd: 'budget_usd' must be a number of US dollars >= 0",
        ("$.workstreams[0].copy[0]: 'copy[0]' must be a path or glob relative to the repository, without '..', "
         "got '../secret'"),
        "$.workstreams[0].link[0]: 'link[0]' must be a path or glob relative to the repository",
        "$.workstreams[0].ports: 'ports' must be an integer from 0 to 1000",
        "$.workstreams[0].on_conflict: 'on_conflict' must be one of fail, agent, got 'merge'",
        "$.workstreams[0].tasks[0].max_cost_usd: 'max_cost_usd' must be a number of US dollars >= 0",
        "$.workstreams[1].setup: 'setup' needs 'repo' as well",
    ):
        assert f"plan.json: {expected}" in result.err, result.err
    assert "Traceback" not in result.err


def test_a_setup_command_left_by_a_killed_runtime_is_killed_on_resume_and_setup_runs_again(tmp_path):
    import os
    import signal

    import psutil

    from tests.conftest import ORCHESTRATE, wait_until

    make_repo(tmp_path)
    go, pid_file, count = tmp_path / "go", tmp_path / "setup.pid", tmp_path / "setups"
    setup = (f"echo started >> {count}; if [ ! -f {go} ]; then echo $$ > {pid_file}; exec sleep 600; fi")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [{
        "id": "feature", "repo": "repo", "setup": [setup],
        "tasks": [{"id": "work", "tool": "shell", "command": "touch done.txt"}]}]}))
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}
    runtime = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=120,
                             what="the set-up command to start"))
    finally:
        runtime.send_signal(signal.SIGKILL)
        runtime.wait(timeout=60)
    left = psutil.Process(pid)
    assert left.is_running() and left.status() != psutil.STATUS_ZOMBIE, "kill -9 left the set-up command running"
    go.touch()
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    resumed = subprocess.run([sys.executable, str(ORCHESTRATE), "execute", "--run", run_id], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert count.read_text() == "started\nstarted\n", "set-up ran again: the first never finished"
    assert (tmp_path / "repo" / "done.txt").exists()
