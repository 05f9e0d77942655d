"""The agent executor in a real in-process Runtime, driving a stand-in agent CLI.

The stand-in (a Python script written to tmp, run through an ``argv`` template with ``output:
json``) works in a tmp git repo and prints Claude Code's result object. What it does is chosen
by ``MODE=<mode>`` in its prompt; it appends every prompt it is given to ``$FAKE_AGENT_PROMPTS``
so a test can see what a fix round told it. A stand-in ``aider`` records its argv and
environment there instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actors.agent_executor import AgentCommand, agent_command, aider_settings, changed_between, worktree_snapshot
from actors.directory import SCHEDULER
from actors.runtime import Runtime, RuntimeOptions
from domain.routing import AdapterInfo, RouterConfig
from messages.control import CancelWork
from persistence.clock import utc_now_iso
from persistence.db import make_engine, sqlite_url
from persistence.migrate import init_db
from persistence.store import Store
from planning.loader import load_plan
from planning.request import build_request
from tests.conftest import wait_until

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
PROMPT_SEPARATOR = "\n--- prompt ---\n"

FAKE_AGENT = textwrap.dedent(
    """
    import json, os, pathlib, sys, time

    prompt = sys.argv[1]
    with open(os.environ["FAKE_AGENT_PROMPTS"], "a") as handle:
        handle.write(prompt + PROMPT_SEPARATOR)
    mode = prompt.split("MODE=")[1].split()[0]
    calc = pathlib.Path("calc.py")
    good, bad = "def add(a, b):\\n    return a + b\\n", "def add(a, b):\\n    return a - b\\n"

    def result(text):
        print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": text}))

    if mode == "edit":
        calc.write_text(good)
        result("implemented add")
    elif mode == "error_result":
        calc.write_text(good)
        print(json.dumps({"type": "result", "subtype": "error_during_execution", "is_error": True,
                          "errors": ["the model stopped mid-turn"]}))
    elif mode == "silent_error":
        print("litellm.APIConnectionError: connection refused", file=sys.stderr)
        result("I could not reach the model")
    elif mode == "fix":
        calc.write_text(good if "The acceptance check" in prompt else bad)
        result("wrote add")
    elif mode == "never_fix":
        calc.write_text(bad)
        result("wrote add")
    elif mode == "sleep":
        print("working", flush=True)
        time.sleep(60)
    """
).replace("PROMPT_SEPARATOR", repr(PROMPT_SEPARATOR))

FAKE_AIDER = textwrap.dedent(
    """
    import json, os, pathlib, sys

    argv = sys.argv[1:]
    with open(os.environ["FAKE_AGENT_PROMPTS"], "a") as handle:
        handle.write(json.dumps({"argv": argv, "cost_map": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")}))
    pathlib.Path(argv[-1]).write_text("def add(a, b):\\n    return a + b\\n")
    print("Applied edit to", argv[-1])
    """
)

PYTEST_GATE = {"kind": "pytest", "args": ["test_calc.py"]}
IMPORT_GATE = {"kind": "import", "modules": ["calc"]}


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def store(tmp_path):
    url = sqlite_url(tmp_path / ".state" / "orchestration.db")
    init_db(url)
    store = Store(make_engine(url), tmp_path / ".state" / "transitions.jsonl")
    yield store
    store.close()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repo with a stub ``calc.add`` and a test it fails."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "calc.py").write_text("def add(a, b):\n    raise NotImplementedError\n")
    (repo / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "stub")
    return repo


@pytest.fixture
def agent(tmp_path) -> AdapterInfo:
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    return AdapterInfo(name="agent", type="agent",
                       settings=(("argv", ("python", str(script), "{prompt}")), ("output", "json")))


class Run:
    """One run of a one-task plan through a Runtime; the ledger's view of it afterwards."""

    def __init__(self, store: Store, tmp_path: Path, repo: Path, info: AdapterInfo, mode: str,
                 acceptance=(), cancel: bool = False, tool: str = "agent", **task) -> None:
        self.prompts_file = tmp_path / "prompts.txt"
        # The project's interpreter: the tests' own (pytest for the gates, python for the agent).
        document = {"id": "w", "python": sys.executable, "tasks": [{
            "id": "code", "tool": tool, "prompt": f"Implement add in calc.py. MODE={mode}", "cwd": str(repo),
            "env": {"FAKE_AGENT_PROMPTS": str(self.prompts_file)}, "acceptance": list(acceptance), **task}]}
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(document))
        plan = load_plan(path)
        self.run_id = store.create_run(build_request(plan, concurrency=4).to_json(), plan.to_json(), at=utc_now_iso())
        runtime = Runtime(store, RuntimeOptions(state_dir=tmp_path / ".state", router=RouterConfig(adapters=(info,))))
        runtime.start()
        try:
            runtime.submit(self.run_id)
            if cancel:
                wait_until(lambda: self.prompts_file.exists(), timeout=15, what="the agent to start")
                runtime.directory.get(SCHEDULER).ask(CancelWork(self.run_id, "w/code"), timeout=10)
            runtime.wait(self.run_id)
        finally:
            runtime.stop()
        (self.attempt,) = store.get_attempts(self.run_id)
        self.task_state = store.get_tasks(self.run_id)[0]["state"]
        changes = [e["payload"] for e in store.get_events(self.run_id, types=["STATE_CHANGED"])]
        self.ws_states = [c["to"] for c in changes if c["entity"] == "workstream"]
        self.task_states = [c["to"] for c in changes if c["entity"] == "task"]
        self.fix_events = [e["payload"] for e in store.get_events(self.run_id, types=["FIX_ROUND"])]

    @property
    def prompts(self) -> list[str]:
        return self.prompts_file.read_text().split(PROMPT_SEPARATOR)[:-1]

    @property
    def log(self) -> str:
        return Path(self.attempt["log_path"]).read_text()


def test_an_agent_that_edits_a_file_and_passes_the_gates_completes(store, tmp_path, repo, agent):
    run = Run(store, tmp_path, repo, agent, "edit", acceptance=[PYTEST_GATE, IMPORT_GATE])
    assert (run.task_state, run.attempt["status"]) == ("COMPLETED", "COMPLETED")
    assert run.attempt["message"] == "completed: changed 1 file(s)"
    assert run.attempt["adapter"] == "agent" and run.attempt["pid"]
    # Static checks (import) first, then runtime (pytest): the workstream shows each phase.
    assert run.ws_states == ["ready", "editing", "static_check", "runtime_check", "done"]
    assert run.log.startswith("== round 0 ==\n") and '"implemented add"' in run.log
    assert Path(run.attempt["log_path"]).with_suffix(".check1.log").read_text().startswith("== round 0 ==\n")


def test_an_error_result_with_exit_0_fails_as_tool_error_even_with_edits(store, tmp_path, repo, agent):
    run = Run(store, tmp_path, repo, agent, "error_result", acceptance=[PYTEST_GATE])
    assert (run.attempt["status"], run.attempt["error_class"]) == ("FAILED", "tool_error")
    assert run.attempt["exit_code"] == 0
    assert "the agent reported a failed turn" in run.attempt["message"]
    assert "the model stopped mid-turn" in run.attempt["message"]
    assert "VALIDATING" not in run.task_states, "no gate runs after a failed turn"


def test_an_agent_that_changes_nothing_and_prints_an_error_fails_as_tool_error(store, tmp_path, repo, agent):
    run = Run(store, tmp_path, repo, agent, "silent_error", acceptance=[PYTEST_GATE])
    assert (run.attempt["status"], run.attempt["error_class"]) == ("FAILED", "tool_error")
    assert run.attempt["message"].startswith("changed no file and reported an error (exit code 0)")
    assert "litellm.APIConnectionError" in run.attempt["message"]


def test_a_failed_gate_sends_the_failure_back_and_the_fix_round_completes(store, tmp_path, repo, agent):
    run = Run(store, tmp_path, repo, agent, "fix", acceptance=[PYTEST_GATE])
    assert (run.task_state, run.attempt["status"]) == ("COMPLETED", "COMPLETED")
    assert run.attempt["message"] == "completed after 1 fix round: changed 1 file(s)"
    first, second = run.prompts
    assert "The acceptance check" not in first
    assert second.startswith(first + "\n\nThe acceptance check `pytest test_calc.py` failed:\n")
    assert "exit code 1: some tests failed" in second and "assert -1 == 5" in second
    assert second.endswith("Fix the code so that it passes.")
    assert run.fix_events == [{"attempt": 1, "round": 1, "reason": "pytest test_calc.py"}]
    assert run.ws_states == ["ready", "editing", "runtime_check", "fixing", "runtime_check", "done"]
    assert "== round 0 ==" in run.log and "== round 1 ==" in run.log
    assert (repo / "calc.py").read_text().endswith("return a + b\n")


def test_when_the_fix_rounds_are_used_up_the_task_fails_at_the_gate_with_every_rounds_failure(
    store, tmp_path, repo, agent
):
    run = Run(store, tmp_path, repo, agent, "never_fix", acceptance=[PYTEST_GATE], max_fix_rounds=1)
    assert (run.attempt["status"], run.attempt["error_class"]) == ("FAILED", "gate")
    assert run.attempt["message"].startswith(  # then the failing test, from pytest's summary
        "gate 'pytest test_calc.py' failed after 1 fix round: exit code 1: some tests failed: "
        "FAILED test_calc.py::test_add - assert"
    )
    gate_output = run.attempt["gate_output"]
    assert gate_output.startswith("== round 0 ==\nAcceptance check `pytest test_calc.py` (pytest, runtime phase)")
    assert "== round 1 ==" in gate_output and gate_output.count("FAILED test_calc.py::test_add") == 2
    assert len(run.prompts) == 2 and len(run.fix_events) == 1


def test_cancel_kills_the_running_agent_and_ends_the_attempt_cancelled(store, tmp_path, repo, agent):
    run = Run(store, tmp_path, repo, agent, "sleep", cancel=True)
    assert (run.attempt["status"], run.task_state) == ("CANCELLED", "CANCELLED")


def test_a_misconfigured_adapter_starts_and_fails_each_task_as_bad_input(store, tmp_path, repo):
    broken = AdapterInfo(name="agent", type="agent", settings=(("preset", "nonesuch"),))
    run = Run(store, tmp_path, repo, broken, "edit")
    assert (run.attempt["status"], run.attempt["error_class"]) == ("FAILED", "bad_input")
    assert run.attempt["message"] == "adapter 'agent' (agent): unknown preset 'nonesuch' (known: codex, claude, gemini)"


def test_an_agent_that_cannot_start_is_a_tool_failure(store, tmp_path, repo):
    missing = AdapterInfo(name="agent", type="agent",
                          settings=(("preset", "claude"), ("executable", str(tmp_path / "no-such-agent"))))
    run = Run(store, tmp_path, repo, missing, "edit", acceptance=[PYTEST_GATE])
    assert (run.attempt["status"], run.attempt["error_class"]) == ("FAILED", "tool_error")
    assert run.attempt["message"].startswith("the agent could not start: ")


def test_aider_runs_with_its_headless_argv_and_environment_and_is_judged_by_its_changes(store, tmp_path, repo):
    script = tmp_path / "fake-aider"
    script.write_text(f"#!{sys.executable}\n{FAKE_AIDER}")
    script.chmod(0o755)
    aider = AdapterInfo(name="aider", type="aider", settings=(("executable", str(script)), ("model", "m"),
                                                               ("api_base", "http://127.0.0.1:9/v1")))
    run = Run(store, tmp_path, repo, aider, "edit", tool="aider", files=["calc.py"], acceptance=[PYTEST_GATE])
    assert (run.attempt["status"], run.attempt["message"]) == ("COMPLETED", "completed: changed 1 file(s)")
    seen = json.loads(run.prompts_file.read_text())
    assert seen["cost_map"] == "True"
    assert seen["argv"][:2] == ["--message", "Implement add in calc.py. MODE=edit"]
    assert "--yes-always" in seen["argv"] and seen["argv"][-1] == "calc.py"
    assert seen["argv"][seen["argv"].index("--model") + 1] == "openai/m"


# -- configuration and change detection, without a runtime -------------------------------------


@pytest.mark.parametrize(("settings", "error"), [
    ((), "name settings.preset (codex, claude, gemini) or give settings.argv"),
    ((("preset", "claude"), ("argv", ("x", "{prompt}"))), "give settings.preset or settings.argv, not both"),
    ((("argv", ("x", "--fixed")),), "settings.argv must pass the prompt"),
    ((("argv", ("x", "{prompt}")), ("output", "xml")), "settings.output must be json or jsonl, not 'xml'"),
    ((("argv", ("x", "{prompt}", "--f={files}")),), "'{files}' must be a whole argument"),
    ((("preset", "codex"), ("modle", "x")), "unknown setting(s) modle"),
])
def test_agent_settings_that_cannot_work_are_refused_with_the_reason(settings, error):
    with pytest.raises(ValueError) as raised:
        agent_command(AdapterInfo(name="a", type="agent", settings=settings))
    assert error in str(raised.value)


def test_a_preset_with_an_executable_runs_that_program():
    command = agent_command(AdapterInfo(name="a", type="agent", settings=(("preset", "codex"), ("executable", "/opt/codex"))))
    assert command.argv("do it", ()) == ("/opt/codex", "exec", "--json", "do it")


def test_aider_settings_fall_back_to_the_environment_and_need_a_model():
    info = AdapterInfo(name="a", type="aider", settings=(("edit_format", "whole"), ("extra_args", ["--no-pretty"])))
    settings = aider_settings(info, {"ORCHESTRATE_AIDER_MODEL": "m", "ORCHESTRATE_AIDER_API_BASE": "http://h/v1"})
    assert (settings.model_name, settings.api_base, settings.edit_format, settings.extra_args) == (
        "openai/m", "http://h/v1", "whole", ("--no-pretty",))
    assert isinstance(agent_command(info, {"ORCHESTRATE_AIDER_MODEL": "m"}), AgentCommand)
    with pytest.raises(ValueError, match="no model named: set settings.model or ORCHESTRATE_AIDER_MODEL"):
        aider_settings(info, {})


def test_changes_count_edits_of_already_dirty_files_and_ignore_aider_bookkeeping(repo):
    (repo / "calc.py").write_text("dirty before\n")
    before = worktree_snapshot(str(repo))
    assert before is not None and set(before) == {"calc.py"}
    assert changed_between(before, worktree_snapshot(str(repo))) == ()
    (repo / "calc.py").write_text("dirty again, and longer\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "new.py").write_text("x = 1\n")
    (repo / ".aider.chat.history.md").write_text("chat\n")
    assert changed_between(before, worktree_snapshot(str(repo / "sub"))) == ("calc.py", "sub/new.py")


def test_outside_a_git_work_tree_the_changes_are_unknown(tmp_path):
    assert worktree_snapshot(str(tmp_path)) is None
    assert changed_between(None, {}) is None
