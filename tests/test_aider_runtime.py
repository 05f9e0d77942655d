"""The real aider CLI as an adapter of the runtime: it edits the sample project in the
workstream's git worktree, the patch ledger records the edit, the pytest gate judges it, a
failing gate sends the failure back to aider for a fix round, and the branch is merged."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.aider_env import AIDER_VERSION, SKIP_ENV, aider_executable
from tests.conftest import ROOT, ledger, link_project_venv
from tests.fake_openai import FakeOpenAI, prompt_text, whole_edit

pytestmark = pytest.mark.timeout(900)

MODEL = "fake-model"
COUNTING = (ROOT / "examples" / "quickstart" / "project" / "textstats" / "counting.py").read_text()
SHOUT_TEST = 'from textstats.counting import shout\n\n\ndef test_shout():\n    assert shout("hi") == "HI!"\n'
RIGHT = COUNTING + '\n\ndef shout(text: str) -> str:\n    return text.upper() + "!"\n'
WRONG = COUNTING + '\n\ndef shout(text: str) -> str:\n    return text.lower() + "!"\n'


@pytest.fixture(scope="module")
def aider() -> Path:
    executable = aider_executable()
    if executable is None:
        pytest.skip(f"{SKIP_ENV}=1: skipping the real aider CLI (aider-chat=={AIDER_VERSION})")
    return executable


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


def setup(tmp_path: Path, aider: Path, server: FakeOpenAI) -> Path:
    repo = tmp_path / "project"
    shutil.copytree(ROOT / "examples" / "quickstart" / "project", repo,
                    ignore=shutil.ignore_patterns("out", "__pycache__", ".orchestrate-report.xml"))
    (repo / "tests" / "test_shout.py").write_text(SHOUT_TEST)
    link_project_venv(tmp_path)  # the gates' pytest: the plan's project's virtualenv
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "sample project")
    metadata = tmp_path / "model-metadata.json"
    metadata.write_text(json.dumps({f"openai/{MODEL}": {
        "max_input_tokens": 32000, "max_tokens": 32000, "max_output_tokens": 4096,
        "input_cost_per_token": 0, "output_cost_per_token": 0, "litellm_provider": "openai", "mode": "chat"}}))
    (tmp_path / "router_config.json").write_text(json.dumps({"adapters": [
        {"name": "aider", "type": "aider", "settings": {
            "executable": str(aider), "model": MODEL, "api_base": server.base_url,
            "edit_format": "whole", "model_metadata_file": str(metadata)}},
        {"name": "shell", "type": "shell"}]}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "shout", "repo": "project", "tasks": [
        {"id": "implement", "tool": "aider", "files": ["textstats/counting.py"], "max_fix_rounds": 2,
         "prompt": "Add shout(text) to textstats/counting.py: the text upper-cased, with '!' appended.",
         "acceptance": [{"kind": "import", "modules": ["textstats"]}, {"kind": "pytest", "args": ["tests"]}]}]}))
    return plan


def run(orchestrate, tmp_path: Path, plan: Path):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return orchestrate("run", str(plan), timeout=600,
                       env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                            "XDG_CACHE_HOME": str(home / ".cache")})


def test_aider_edits_the_worktree_the_patch_is_recorded_and_the_gate_passes(tmp_path, aider, orchestrate):
    with FakeOpenAI([whole_edit("textstats/counting.py", RIGHT)]) as server:
        plan = setup(tmp_path, aider, server)
        result = run(orchestrate, tmp_path, plan)
    assert result.code == 0, result.out + result.err
    repo = tmp_path / "project"
    assert "def shout" in (repo / "textstats" / "counting.py").read_text(), "merged into main"
    db = ledger(tmp_path)
    patch = db.execute("select files_json, patch_path from patch_history").fetchone()
    assert [f["path"] for f in json.loads(patch["files_json"])] == ["textstats/counting.py"]
    assert "+def shout" in Path(patch["patch_path"]).read_text()
    assert db.execute("select count(*) from events where event_type = 'WORKSTREAM_MERGED'").fetchone()[0] == 1
    attempt = db.execute("select status, adapter from step_attempts").fetchone()
    assert (attempt["status"], attempt["adapter"]) == ("COMPLETED", "aider")
    assert not server.foreign_requests


def test_a_failing_gate_sends_the_failure_back_to_aider_which_fixes_it(tmp_path, aider, orchestrate):
    with FakeOpenAI([whole_edit("textstats/counting.py", WRONG),
                     whole_edit("textstats/counting.py", RIGHT)]) as server:
        plan = setup(tmp_path, aider, server)
        result = run(orchestrate, tmp_path, plan)
        prompts = [prompt_text(body) for body in server.chat_requests]
    assert result.code == 0, result.out + result.err
    assert len(prompts) == 2
    assert "failed" in prompts[1] and "HI!" in prompts[1], "the next round's prompt carries the gate failure"
    db = ledger(tmp_path)
    moves = [json.loads(r[0])["to"] for r in db.execute(
        "select payload_json from events where event_type = 'STATE_CHANGED' "
        "and json_extract(payload_json, '$.entity') = 'workstream' order by id")]
    assert "fixing" in moves and moves[-1] == "done", moves
    assert db.execute("select count(*) from events where event_type = 'FIX_ROUND'").fetchone()[0] == 1
    assert "def shout" in (tmp_path / "project" / "textstats" / "counting.py").read_text()
