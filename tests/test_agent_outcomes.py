"""Outcomes you can trust, per preset: each agent CLI's structured result (in the formats the
tools really print, from their docs and sources) is classified as success, the task's failure
(a limit reached: command_failed), a refusal (bad_input) or the tool's failure (tool_error,
which alone counts against the circuit breaker); and what each round used is read from it.

The end-to-end cases run `orchestrate run` with stand-in CLIs that print those outputs and
exit as the real tools do (often 0 after a failed turn)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from adapters.agents import CLAUDE, CODEX, GEMINI, classify_agent_attempt, parse_agent_output
from domain.agent_outcomes import Blame
from domain.agent_usage import AgentUsage, aider_usage, usage_of
from tests.conftest import ledger

# -- the tools' real output formats ------------------------------------------------------------
CLAUDE_USAGE = {"input_tokens": 12, "cache_creation_input_tokens": 4213, "cache_read_input_tokens": 10866,
                "output_tokens": 287, "server_tool_use": {"web_search_requests": 0}, "service_tier": "standard"}


def claude(**fields) -> str:
    base = {"type": "result", "subtype": "success", "is_error": False, "duration_ms": 2843, "duration_api_ms": 3412,
            "num_turns": 3, "result": "Fixed add() in calc.py.", "session_id": "2b0f4a0c-5a4e-4f55-9d0e-1b1f0f9d1a11",
            "total_cost_usd": 0.0123, "usage": CLAUDE_USAGE, "permission_denials": []}
    return json.dumps({**base, **fields})


CLAUDE_OK = claude()
CLAUDE_MAX_TURNS = claude(subtype="error_max_turns", is_error=True, num_turns=2, result=None)
CLAUDE_BUDGET = claude(subtype="error_max_budget_usd", is_error=True, result=None,
                       errors=["Reached maximum budget ($0.05)"])
CLAUDE_API_ERROR = claude(is_error=True, num_turns=1, total_cost_usd=0,
                          result='API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
CLAUDE_CRASHED = claude(subtype="error_during_execution", is_error=True, result=None,
                        errors=["Error: ENOENT: no such file or directory, open '/tmp/x'"])
CLAUDE_DENIED = claude(result="I need permission to write calc.py.", permission_denials=[
    {"tool_name": "Write", "tool_use_id": "toolu_01", "tool_input": {"file_path": "calc.py", "content": "x"}}])


def codex(*events: dict) -> str:
    head = [{"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"}, {"type": "turn.started"}]
    return "".join(json.dumps(e) + "\n" for e in head + list(events))


CODEX_MESSAGE = {"type": "item.completed", "item": {"id": "item_1", "type": "agent_message", "text": "Fixed add()."}}
CODEX_USAGE = {"input_tokens": 2946, "cached_input_tokens": 1024, "output_tokens": 77}
CODEX_OK = codex({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Fixing add**"}},
                 CODEX_MESSAGE, {"type": "turn.completed", "usage": CODEX_USAGE})
CODEX_STREAM_FAILED = codex({"type": "error", "message": "stream error: exceeded retry limit, last status: 503; retrying 5/5"},
                            {"type": "turn.failed", "error": {"message": "exceeded retry limit, last status: 503"}})
CODEX_CONTEXT = codex({"type": "turn.failed", "error": {"message": "Codex ran out of room in the model's context window. "
                                                                   "Start a new conversation or clear earlier history before retrying."}})

GEMINI_STATS = {"models": {"gemini-2.5-pro": {
    "api": {"totalRequests": 2, "totalErrors": 0, "totalLatencyMs": 5012},
    "tokens": {"prompt": 24939, "candidates": 20, "total": 25113, "cached": 21263, "thoughts": 154, "tool": 0}}},
    "tools": {"totalCalls": 1, "totalSuccess": 1, "totalFail": 0, "totalDurationMs": 1881},
    "files": {"totalLinesAdded": 1, "totalLinesRemoved": 1}}
GEMINI_OK = json.dumps({"response": "Fixed add() in calc.py.", "stats": GEMINI_STATS})
GEMINI_TURN_LIMIT = json.dumps({"error": {"type": "FatalTurnLimitedError", "code": 53, "message":
    "Reached max session turns for this session. Increase the number of turns by specifying maxSessionTurns "
    "in settings.json."}})
GEMINI_AUTH = json.dumps({"error": {"type": "FatalAuthenticationError", "code": 41,
                                    "message": "GEMINI_API_KEY environment variable not found."}})
GEMINI_INPUT = json.dumps({"error": {"type": "FatalInputError", "code": 42, "message": "No input provided via stdin."}})

AIDER_OUTPUT = textwrap.dedent(
    """\
    Aider v0.86.2
    Model: openai/fake-model with whole edit format
    Git repo: .git with 3 files
    Repo-map: disabled
    calc.py
    Applied edit to calc.py
    Tokens: 2.3k sent, 150 received. Cost: $0.0058 message, $0.0058 session.
    Tokens: 12k sent, 1.0k cache write, 2.5k cache hit, 1.2k received.
    Cost: $0.04 message, $0.05 session.
    """
)


@pytest.mark.parametrize(
    ("preset", "output", "exit_code", "outcome", "error_class", "said"),
    [
        (CLAUDE, CLAUDE_OK, 0, "success", "", "changed 1 file(s)"),
        (CLAUDE, CLAUDE_MAX_TURNS, 0, "task_failed", "command_failed", "error_max_turns"),
        (CLAUDE, CLAUDE_BUDGET, 0, "task_failed", "command_failed", "Reached maximum budget"),
        (CLAUDE, CLAUDE_API_ERROR, 0, "tool_error", "tool_error", "API Error: 529"),
        (CLAUDE, CLAUDE_CRASHED, 1, "tool_error", "tool_error", "error_during_execution"),
        (CLAUDE, CLAUDE_DENIED, 0, "bad_input", "bad_input", "permission denied for tool(s): Write"),
        (CODEX, CODEX_OK, 0, "success", "", "changed 1 file(s)"),
        (CODEX, CODEX_STREAM_FAILED, 1, "tool_error", "tool_error", "last status: 503"),
        (CODEX, CODEX_CONTEXT, 1, "task_failed", "command_failed", "context window"),
        (GEMINI, GEMINI_OK, 0, "success", "", "changed 1 file(s)"),
        (GEMINI, GEMINI_TURN_LIMIT, 53, "task_failed", "command_failed", "Reached max session turns"),
        (GEMINI, GEMINI_AUTH, 41, "tool_error", "tool_error", "GEMINI_API_KEY"),
        (GEMINI, GEMINI_INPUT, 42, "bad_input", "bad_input", "No input provided"),
    ],
)
def test_each_presets_result_is_classified(preset, output, exit_code, outcome, error_class, said):
    verdict = classify_agent_attempt(exit_code, parse_agent_output(preset, output), 1, output[-4000:])
    assert (verdict.outcome, verdict.error_class) == (outcome, error_class), verdict
    assert said in verdict.reason


def test_a_task_failure_is_not_blamed_on_the_tool_even_when_nothing_changed():
    report = parse_agent_output(CLAUDE, CLAUDE_MAX_TURNS)
    assert report.blame is Blame.TASK
    verdict = classify_agent_attempt(0, report, 0, CLAUDE_MAX_TURNS)
    assert verdict.error_class == "command_failed"


@pytest.mark.parametrize(
    ("tool", "output", "usage"),
    [
        ("aider", AIDER_OUTPUT, AgentUsage(2300 + 12000, 150 + 1200, 0.0058 + 0.04)),
        ("aider", "Tokens: 812 sent, 95 received.\n", AgentUsage(812, 95, None)),
        ("aider", "no usage here\n", AgentUsage()),
        ("claude", CLAUDE_OK, AgentUsage(12 + 4213 + 10866, 287, 0.0123)),
        ("claude", "npm warn\n" + CLAUDE_API_ERROR, AgentUsage(12 + 4213 + 10866, 287, 0.0)),
        ("codex", CODEX_OK, AgentUsage(2946, 77, None)),
        ("codex", CODEX_STREAM_FAILED, AgentUsage()),
        ("gemini", GEMINI_OK, AgentUsage(24939, 20 + 154, None)),
        ("gemini", GEMINI_AUTH, AgentUsage()),
        ("gemini", "not json at all", AgentUsage()),
    ],
)
def test_usage_is_read_from_each_tools_own_report(tool, output, usage):
    found = usage_of(tool, output)
    assert (found.tokens_in, found.tokens_out) == (usage.tokens_in, usage.tokens_out)
    assert found.cost_usd == pytest.approx(usage.cost_usd) if usage.cost_usd is not None else found.cost_usd is None


def test_aider_usage_sums_every_reply_of_a_round():
    two = "Tokens: 1.5k sent, 200 received. Cost: $0.0010 message, $0.0010 session.\n" * 2
    assert aider_usage(two) == AgentUsage(3000, 400, pytest.approx(0.002))


# -- end to end: stand-in CLIs in a real run ----------------------------------------------------
STAND_IN = textwrap.dedent(
    """
    import pathlib, sys
    here = pathlib.Path(__file__)
    pathlib.Path("calc.py").write_text("def add(a, b):\\n    return a + b\\n")
    sys.stdout.write(here.with_suffix(".out").read_text())
    sys.exit(int(here.with_suffix(".code").read_text()))
    """
)


def run_stand_in(tmp_path: Path, orchestrate, preset: str, output: str, exit_code: int):
    script = tmp_path / preset
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    script.with_suffix(".out").write_text(output)
    script.with_suffix(".code").write_text(str(exit_code))
    router = tmp_path / "router.json"
    router.write_text(json.dumps({"adapters": [
        {"name": "agent", "type": "agent", "breaker": {"max_failures": 1, "reset_timeout_s": 600},
         "settings": {"preset": preset, "executable": str(script)}}]}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "fix", "tasks": [{"id": "calc", "tool": "agent", "prompt": "fix add()"}]}))
    return orchestrate("run", str(plan), "--router-config", str(router))


@pytest.mark.parametrize(
    ("preset", "output", "exit_code", "state", "error_class", "circuit_opens"),
    [
        ("claude", CLAUDE_OK, 0, "COMPLETED", None, False),
        ("claude", CLAUDE_MAX_TURNS, 0, "FAILED", "command_failed", False),
        ("claude", CLAUDE_API_ERROR, 0, "FAILED", "tool_error", True),
        ("claude", CLAUDE_DENIED, 0, "FAILED", "bad_input", False),
        ("codex", CODEX_STREAM_FAILED, 1, "FAILED", "tool_error", True),
        ("codex", CODEX_CONTEXT, 1, "FAILED", "command_failed", False),
        ("gemini", GEMINI_TURN_LIMIT, 53, "FAILED", "command_failed", False),
        ("gemini", GEMINI_AUTH, 41, "FAILED", "tool_error", True),
    ],
)
def test_stand_in_clis_outcomes_reach_the_ledger_and_only_tool_failures_trip_the_breaker(
        tmp_path, orchestrate, preset, output, exit_code, state, error_class, circuit_opens):
    result = run_stand_in(tmp_path, orchestrate, preset, output, exit_code)
    assert result.code == (0 if state == "COMPLETED" else 1), result.out + result.err
    db = ledger(tmp_path)
    attempt = db.execute("select status, error_class, tokens_in, cost_usd from step_attempts").fetchone()
    assert (attempt["status"], attempt["error_class"]) == (state, error_class)
    opened = db.execute("select count(*) from events where event_type = 'CIRCUIT_OPEN'").fetchone()[0]
    assert bool(opened) is circuit_opens
    if preset == "claude":
        assert attempt["tokens_in"] == 12 + 4213 + 10866
