"""What agent attempts cost, recorded and enforced: the real aider against the fake OpenAI server
(which reports token counts; the model's metadata names per-token prices, so aider prints its
`Tokens: … Cost: …` line), every attempt's tokens and cost in the ledger and in `runs show`,
and a run whose budget is spent stops before the next agent attempt."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.aider_env import AIDER_VERSION, SKIP_ENV, aider_executable
from tests.conftest import ROOT, ledger
from tests.fake_openai import FakeOpenAI, Reply, whole_edit

pytestmark = pytest.mark.timeout(900)

MODEL = "fake-model"
# $2 per million tokens in, $8 per million out.
PRICE_IN, PRICE_OUT = 2e-06, 8e-06
COUNTING = (ROOT / "examples" / "quickstart" / "project" / "textstats" / "counting.py").read_text()
SHOUT = COUNTING + '\n\ndef shout(text: str) -> str:\n    return text.upper() + "!"\n'
WHISPER = SHOUT + '\n\ndef whisper(text: str) -> str:\n    return text.lower() + "..."\n'


@pytest.fixture(scope="module")
def aider() -> Path:
    executable = aider_executable()
    if executable is None:
        pytest.skip(f"{SKIP_ENV}=1: skipping the real aider CLI (aider-chat=={AIDER_VERSION})")
    return executable


def project(tmp_path: Path, aider: Path, server: FakeOpenAI, budget_usd: float | None) -> Path:
    repo = tmp_path / "project"
    shutil.copytree(ROOT / "examples" / "quickstart" / "project", repo,
                    ignore=shutil.ignore_patterns("out", "__pycache__", ".orchestrate-report.xml"))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "sample project"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                       capture_output=True)
    metadata = tmp_path / "model-metadata.json"
    metadata.write_text(json.dumps({f"openai/{MODEL}": {
        "max_input_tokens": 32000, "max_tokens": 32000, "max_output_tokens": 4096,
        "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT,
        "litellm_provider": "openai", "mode": "chat"}}))
    (tmp_path / "router_config.json").write_text(json.dumps({"adapters": [
        {"name": "aider", "type": "aider", "settings": {
            "executable": str(aider), "model": MODEL, "api_base": server.base_url,
            "edit_format": "whole", "model_metadata_file": str(metadata)}},
        {"name": "shell", "type": "shell"}]}))
    steps = [
        {"id": "shout", "tool": "aider", "files": ["textstats/counting.py"], "max_fix_rounds": 0,
         "prompt": "Add shout(text) to textstats/counting.py: upper-cased, with '!' appended."},
        {"id": "whisper", "tool": "aider", "files": ["textstats/counting.py"], "max_fix_rounds": 0,
         "depends_on": ["shout"], "prompt": "Add whisper(text): lower-cased, with '...' appended."},
    ]
    plan = tmp_path / "plan.json"
    bundle = {"workstreams": [{"id": "words", "repo": "project", "tasks": steps}]}
    if budget_usd is not None:
        bundle["budget_usd"] = budget_usd
    plan.write_text(json.dumps(bundle))
    return plan


def run(orchestrate, tmp_path: Path, *args: str):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return orchestrate(*args, timeout=600, env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                                               "XDG_CACHE_HOME": str(home / ".cache")})


def replies() -> list[Reply]:
    return [Reply(whole_edit("textstats/counting.py", SHOUT), prompt_tokens=1200, completion_tokens=300),
            Reply(whole_edit("textstats/counting.py", WHISPER), prompt_tokens=1500, completion_tokens=400)]


def test_each_aider_attempt_records_its_tokens_and_cost(tmp_path, aider, orchestrate):
    with FakeOpenAI(replies()) as server:
        plan = project(tmp_path, aider, server, budget_usd=None)
        result = run(orchestrate, tmp_path, "run", str(plan))
    assert result.code == 0, result.out + result.err
    db = ledger(tmp_path)
    rows = db.execute("select step_name, tokens_in, tokens_out, cost_usd from step_attempts "
                      "where adapter = 'aider' order by id").fetchall()
    assert [(r["step_name"], r["tokens_in"], r["tokens_out"]) for r in rows] == [
        ("words/shout", 1200, 300), ("words/whisper", 1500, 400)]
    # aider prints the cost to 2 significant digits: $0.0048 and $0.0062
    assert rows[0]["cost_usd"] == pytest.approx(1200 * PRICE_IN + 300 * PRICE_OUT, rel=0.05)
    assert rows[1]["cost_usd"] == pytest.approx(1500 * PRICE_IN + 400 * PRICE_OUT, rel=0.05)
    run_id = db.execute("select run_id from runs").fetchone()[0]
    shown = run(orchestrate, tmp_path, "runs", "show", run_id, "--json").json()
    attempts = {a["step_name"]: a for a in shown["agent_attempts"] if a["adapter"] == "aider"}
    assert attempts["words/shout"]["tokens_in"] == 1200 and attempts["words/shout"]["cost_usd"] == rows[0]["cost_usd"]
    assert shown["cost"]["cost_usd"] == pytest.approx(rows[0]["cost_usd"] + rows[1]["cost_usd"])
    text = run(orchestrate, tmp_path, "runs", "show", run_id).out
    assert "cost: $0.011 (2 agent attempts, 2,700 tokens in, 700 out)" in text, text
    report = run(orchestrate, tmp_path, "report", run_id, "-o", "-").out
    assert "(1,200 tokens in, 300 out, $0.0048)" in report and "(1,500 tokens in, 400 out, $0.0062)" in report


def test_a_spent_run_budget_blocks_the_next_agent_step_and_the_run_is_partial(tmp_path, aider, orchestrate):
    with FakeOpenAI(replies()) as server:
        # Below what the first step costs ($0.0048): once it has run, nothing more may start.
        plan = project(tmp_path, aider, server, budget_usd=0.004)
        result = run(orchestrate, tmp_path, "run", str(plan))
        assert len(server.chat_requests) == 1, "the second agent step never reached the model"
    assert result.code == 1, result.out + result.err
    assert "⊘ words/whisper  BLOCKED  budget: the run has spent $0.0048 of its budget_usd $0.004" in result.out
    assert "partial" in result.out
    assert "  budget: the run has spent $0.0048 of its budget_usd $0.004: agent steps were not started" in result.out
    db = ledger(tmp_path)
    recorded = db.execute("select status, status_reason from runs").fetchone()
    assert recorded["status"] == "partial"
    assert recorded["status_reason"] == ("budget: the run has spent $0.0048 of its budget_usd $0.004 (agent steps not "
                                    "started); 2 blocked, 1 completed")
    states = dict(db.execute("select task_key, state from tasks").fetchall())
    assert states == {"words/shout": "COMPLETED", "words/whisper": "BLOCKED", "words/@merge": "BLOCKED"}
    assert db.execute("select count(*) from step_attempts where step_name = 'words/whisper'").fetchone()[0] == 0
    event = json.loads(db.execute("select payload_json from events where event_type = 'BUDGET_EXHAUSTED'")
                       .fetchone()[0])
    assert event["reason"].startswith("budget: ") and event["spent_usd"] == pytest.approx(0.0048, rel=0.05)

    # A resumed run counts what was already spent: still nothing starts.
    run_id = db.execute("select run_id from runs").fetchone()[0]
    with FakeOpenAI([]) as server:
        resumed = run(orchestrate, tmp_path, "execute", "--run", run_id)
        assert server.chat_requests == []
    assert resumed.code == 1, resumed.out + resumed.err
    assert "words/whisper  BLOCKED  budget: the run has spent $0.0048" in resumed.out
