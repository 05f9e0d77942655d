"""The real aider CLI (pinned in tests/aider_env.py) against the fake OpenAI server.

Each test makes a tmp git repository with a small module and its test, runs aider headless
with the argv of :func:`adapters.agents.aider_argv`, and checks what it really did: the exit
code, the file on disk, ``git status`` and the requests the server received. ``HOME`` is a
tmp directory (aider writes ``~/.aider/``), and every HTTP(S) proxy variable points at the
fake server, so an attempt to reach any other host is recorded (and refused) instead of
leaving the machine; each test asserts there was none.

The first test installs aider into ``.venv-aider/`` (~50 s on 2 cores with a cold pip cache);
``ORCHESTRATE_SKIP_AIDER=1`` skips the module. The persistent-outage test takes ~70 s: aider
really does retry a 5xx with backoff for about a minute before giving up (and exiting 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.agents import AiderSettings, aider_argv, aider_environment, classify_agent_attempt, substantive_changes
from tests.aider_env import AIDER_VERSION, SKIP_ENV, aider_executable
from tests.fake_openai import FakeOpenAI, error_reply, prompt_text, whole_edit

# The install (first use) counts against the first test's timeout.
pytestmark = pytest.mark.timeout(900)

MODEL = "fake-model"
METADATA = {
    f"openai/{MODEL}": {
        "max_input_tokens": 32000,
        "max_tokens": 32000,
        "max_output_tokens": 4096,
        "input_cost_per_token": 0,
        "output_cost_per_token": 0,
        "litellm_provider": "openai",
        "mode": "chat",
    }
}
BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


@pytest.fixture(scope="module")
def aider() -> Path:
    started = time.monotonic()
    executable = aider_executable()
    if executable is None:
        pytest.skip(f"{SKIP_ENV}=1: skipping the tests of the real aider CLI (aider-chat=={AIDER_VERSION})")
    elapsed = time.monotonic() - started
    if elapsed > 1:
        print(f"\ninstalled aider-chat=={AIDER_VERSION} in {elapsed:.0f}s")
    return executable


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


@dataclass
class Sandbox:
    root: Path
    repo: Path
    home: Path
    metadata: Path

    def status(self) -> list[str]:
        return git(self.repo, "status", "--porcelain=v1", "--untracked-files=all").splitlines()

    def changed_paths(self) -> list[str]:
        return [line[3:] for line in self.status()]


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    repo, home = tmp_path / "repo", tmp_path / "home"
    repo.mkdir()
    home.mkdir()
    (repo / "calc.py").write_text(BUGGY)
    (repo / "test_calc.py").write_text(TEST_CALC)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    metadata = tmp_path / "model-metadata.json"  # outside the repo: git status stays about aider
    metadata.write_text(json.dumps(METADATA))
    return Sandbox(tmp_path, repo, home, metadata)


@dataclass
class AiderRun:
    code: int
    output: str
    seconds: float


def run_aider(aider: Path, sandbox: Sandbox, server: FakeOpenAI, prompt: str, files=("calc.py",)) -> AiderRun:
    settings = AiderSettings(
        executable=str(aider),
        model=MODEL,
        api_base=server.base_url,
        edit_format="whole",
        model_metadata_file=str(sandbox.metadata),
    )
    drop = ("OPENAI_", "AIDER_", "ANTHROPIC_", "LITELLM_", "GIT_", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    env.update(aider_environment(settings))
    env.update(
        HOME=str(sandbox.home),
        XDG_CONFIG_HOME=str(sandbox.home / ".config"),
        XDG_CACHE_HOME=str(sandbox.home / ".cache"),
        # belt and braces beside the flags
        AIDER_ANALYTICS="false",
        AIDER_CHECK_UPDATE="false",
        # any attempt to reach another host goes to the fake server, which records it
        HTTP_PROXY=server.proxy_url, HTTPS_PROXY=server.proxy_url, ALL_PROXY=server.proxy_url,
        http_proxy=server.proxy_url, https_proxy=server.proxy_url, all_proxy=server.proxy_url,
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )  # fmt: skip
    started = time.monotonic()
    completed = subprocess.run(
        aider_argv(settings, prompt, files),
        cwd=sandbox.repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600,
    )  # fmt: skip
    return AiderRun(completed.returncode, completed.stdout, time.monotonic() - started)


def gate(sandbox: Sandbox) -> subprocess.CompletedProcess:
    """The acceptance check: the repo's own test, run by this interpreter's pytest."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_calc.py"],
        cwd=sandbox.repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_aider_applies_a_whole_file_edit_without_committing(aider, sandbox):
    with FakeOpenAI([whole_edit("calc.py", FIXED)]) as server:
        run = run_aider(aider, sandbox, server, "Fix add() in calc.py so that test_calc.py passes.")
    assert run.code == 0, run.output
    assert (sandbox.repo / "calc.py").read_text() == FIXED
    # modified, not committed (--no-auto-commits), and no aider files left in the work tree
    assert sandbox.status() == [" M calc.py"], run.output
    assert git(sandbox.repo, "rev-list", "--count", "HEAD").strip() == "1"
    # one completion; the prompt carried the instruction and the file's content
    assert len(server.chat_requests) == 1
    sent = prompt_text(server.chat_requests[0])
    assert "Fix add() in calc.py" in sent and "return a - b" in sent
    assert server.chat_requests[0]["model"] == MODEL
    assert server.foreign_requests == [], "aider tried to reach the network"
    assert (sandbox.home / ".aider").is_dir()  # aider's per-user files went to the tmp HOME
    verdict = classify_agent_attempt(run.code, None, len(substantive_changes(sandbox.changed_paths())), run.output[-4000:])
    assert (verdict.outcome, verdict.reason) == ("success", "changed 1 file(s)")
    assert gate(sandbox).returncode == 0


def test_the_next_round_prompt_carries_the_gate_failure(aider, sandbox):
    wrong = "def add(a, b):\n    return a * b\n"
    with FakeOpenAI([whole_edit("calc.py", wrong), whole_edit("calc.py", FIXED)]) as server:
        first = run_aider(aider, sandbox, server, "Fix add() in calc.py so that test_calc.py passes.")
        assert first.code == 0 and (sandbox.repo / "calc.py").read_text() == wrong
        failed = gate(sandbox)
        assert failed.returncode == 1
        failure = failed.stdout[-1500:]
        second = run_aider(aider, sandbox, server, f"The tests still fail. Output:\n{failure}\nFix calc.py.")
    assert second.code == 0
    assert (sandbox.repo / "calc.py").read_text() == FIXED
    assert len(server.chat_requests) == 2
    next_prompt = prompt_text(server.chat_requests[1])
    assert "assert 6 == 5" in failure and "assert 6 == 5" in next_prompt
    assert "return a * b" in next_prompt  # aider re-read the file as the first round left it
    assert server.foreign_requests == []
    assert gate(sandbox).returncode == 0


def test_transient_500_then_no_edit_is_a_tool_error_despite_exit_0(aider, sandbox):
    # One 500 (aider retries after 0.25 s), then an answer with no edit in it.
    replies = [error_reply(500, "fake server: overloaded", should_retry=False), "I am unable to change calc.py."]
    with FakeOpenAI(replies) as server:
        run = run_aider(aider, sandbox, server, "Fix add() in calc.py.")
    assert run.code == 0, run.output  # aider's exit code says nothing went wrong
    assert (sandbox.repo / "calc.py").read_text() == BUGGY
    assert sandbox.status() == []
    assert len(server.chat_requests) == 2 and server.foreign_requests == []
    assert "litellm.InternalServerError" in run.output
    verdict = classify_agent_attempt(run.code, None, len(substantive_changes(sandbox.changed_paths())), run.output[-4000:])
    assert verdict.outcome == "tool_error" and verdict.error_class == "tool_error"
    assert "changed no file" in verdict.reason and "InternalServerError" in verdict.reason
