"""Agent adapters: argv building, structured-output parsing and the "did it do anything" verdict.

The end-to-end cases run a stand-in agent CLI (a Python script written to tmp) as a real
subprocess: it prints the documented JSON shapes of Claude Code, Gemini CLI and Codex CLI,
chosen by ``FAKE_AGENT_MODE``, exits with the code real CLIs use, and may edit a file.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from adapters.agents import (
    AIDER_ENVIRONMENT,
    AIDER_HEADLESS_FLAGS,
    CLAUDE,
    CODEX,
    GEMINI,
    PRESETS,
    AgentPreset,
    AgentReport,
    AiderSettings,
    agent_argv,
    aider_argv,
    aider_environment,
    classify_agent_attempt,
    error_marker,
    parse_agent_output,
    substantive_changes,
)
from tests.fake_openai import FakeOpenAI, error_reply, prompt_text, whole_edit

# --------------------------------------------------------------------------------------------
# aider argv
# --------------------------------------------------------------------------------------------


def test_aider_argv_against_an_openai_compatible_server():
    settings = AiderSettings(
        executable="/opt/aider/bin/aider",
        model="fake-model",
        api_base="http://127.0.0.1:9/v1",
        edit_format="whole",
        model_metadata_file="/tmp/meta.json",
        extra_args=("--no-pretty",),
    )
    assert aider_argv(settings, "Fix add()", ["calc.py", "test_calc.py"]) == (
        "/opt/aider/bin/aider",
        "--message", "Fix add()",
        "--yes-always", "--no-auto-commits",
        "--no-stream", "--no-analytics", "--no-check-update", "--no-show-model-warnings",
        "--no-show-release-notes", "--map-tokens", "0", "--no-gitignore",
        "--model", "openai/fake-model",
        "--openai-api-base", "http://127.0.0.1:9/v1", "--openai-api-key", "x",
        "--model-metadata-file", "/tmp/meta.json",
        "--edit-format", "whole",
        "--chat-history-file", os.devnull, "--input-history-file", os.devnull,
        "--no-pretty",
        "calc.py", "test_calc.py",
    )  # fmt: skip


def test_aider_argv_without_api_base_passes_the_model_as_is_and_no_key():
    argv = aider_argv(AiderSettings(model="anthropic/claude-x"), "do it", ["a.py"])
    assert argv[0] == "aider"
    assert argv[argv.index("--model") + 1] == "anthropic/claude-x"
    for absent in ("--openai-api-base", "--openai-api-key", "--edit-format", "--model-metadata-file"):
        assert absent not in argv
    assert argv[-1] == "a.py"
    assert set(AIDER_HEADLESS_FLAGS) <= set(argv)


def test_aider_argv_edge_cases():
    # openai/ is not doubled; a dash-leading prompt or file is not read as an option;
    # braces and newlines stay one argument; None history keeps aider's own default.
    settings = AiderSettings(model="openai/m", api_base="http://h/v1", chat_history_file=None, input_history_file=None)
    argv = aider_argv(settings, "-v looks like a flag", ["-weird.py"])
    assert argv[argv.index("--model") + 1] == "openai/m"
    assert "--message=-v looks like a flag" in argv
    assert argv[-1] == "./-weird.py"
    assert "--chat-history-file" not in argv and "--input-history-file" not in argv
    prompt = "line 1\n{files} {prompt} 100%"
    argv = aider_argv(settings, prompt, [])
    assert argv[argv.index("--message") + 1] == prompt


def test_aider_settings_from_env():
    settings = AiderSettings.from_env(
        {
            "ORCHESTRATE_AIDER": "/x/aider",
            "ORCHESTRATE_AIDER_MODEL": "qwen",
            "ORCHESTRATE_AIDER_API_BASE": "http://127.0.0.1:8000/v1",
            "ORCHESTRATE_AIDER_API_KEY": "sk-local",
        }
    )
    assert (settings.executable, settings.model, settings.api_base, settings.api_key) == (
        "/x/aider", "qwen", "http://127.0.0.1:8000/v1", "sk-local",
    )  # fmt: skip
    assert settings.model_name == "openai/qwen"
    defaults = AiderSettings.from_env({"ORCHESTRATE_AIDER_MODEL": "gpt-x", "ORCHESTRATE_AIDER_API_BASE": ""})
    assert (defaults.executable, defaults.api_base, defaults.api_key, defaults.edit_format) == ("aider", None, "x", None)
    with pytest.raises(ValueError, match="ORCHESTRATE_AIDER_MODEL"):
        AiderSettings.from_env({})


def test_aider_environment_keeps_litellm_offline():
    assert ("LITELLM_LOCAL_MODEL_COST_MAP", "True") in aider_environment(AiderSettings(model="m"))
    assert aider_environment(AiderSettings(model="m")) == AIDER_ENVIRONMENT


def test_substantive_changes_drops_aider_bookkeeping():
    paths = [".aider.chat.history.md", "src/.aider.tags.cache.v4/cache.db", "calc.py", "docs/aider.md"]
    assert substantive_changes(paths) == ("calc.py", "docs/aider.md")


# --------------------------------------------------------------------------------------------
# generic presets
# --------------------------------------------------------------------------------------------


def test_presets_fill_in_the_prompt_as_one_argument():
    prompt = "fix {it} -- now"
    assert agent_argv(CODEX, prompt) == ("codex", "exec", "--json", prompt)
    assert agent_argv(CLAUDE, prompt) == ("claude", "-p", prompt, "--output-format", "json")
    assert agent_argv(GEMINI, prompt, ["a.py"], executable="/bin/g") == ("/bin/g", "-p", prompt, "--output-format", "json")
    assert set(PRESETS) == {"codex", "claude", "gemini"}


def test_files_placeholder_expands_to_several_arguments():
    preset = AgentPreset("mine", ("agent", "--ask={prompt}", "{files}", "--end"), "json")
    assert agent_argv(preset, "p", ["a.py", "b c.py"]) == ("agent", "--ask=p", "a.py", "b c.py", "--end")
    assert agent_argv(preset, "p") == ("agent", "--ask=p", "--end")
    with pytest.raises(ValueError, match="whole argument"):
        agent_argv(AgentPreset("bad", ("agent", "--files={files}"), "json"), "p")


# --------------------------------------------------------------------------------------------
# parsing the documented shapes
# --------------------------------------------------------------------------------------------


def claude_result(**fields) -> str:
    base = {"type": "result", "subtype": "success", "is_error": False, "result": "Done.", "duration_ms": 10,
            "num_turns": 2, "session_id": "s", "total_cost_usd": 0.01, "usage": {}}  # fmt: skip
    return json.dumps({**base, **fields})


def codex_lines(*events: dict) -> str:
    return "\n".join(json.dumps(e) for e in ({"type": "thread.started", "thread_id": "t1"}, *events)) + "\n"


MESSAGE = {"type": "item.completed", "item": {"id": "item_1", "type": "agent_message", "text": "Fixed add()."}}
COMPLETED = {"type": "turn.completed", "usage": {"input_tokens": 5, "cached_input_tokens": 0, "output_tokens": 3}}


@pytest.mark.parametrize(
    ("preset", "stdout", "ok", "summary", "error"),
    [
        (CLAUDE, claude_result(), True, "Done.", ""),
        # a failed API call: subtype success, is_error true, the message in result
        (CLAUDE, claude_result(is_error=True, result="API Error: 500 overloaded"), False, "", "is_error: API Error: 500"),
        (CLAUDE, claude_result(subtype="error_max_turns", is_error=True, result=None), False, "", "error_max_turns"),
        (CLAUDE, claude_result(subtype="error_during_execution", is_error=True, result=None,
                               errors=["Not signed in"]), False, "", "error_during_execution: Not signed in"),  # fmt: skip
        (CLAUDE, claude_result(permission_denials=[{"tool_name": "Edit", "tool_use_id": "x", "tool_input": {}}]),
         False, "Done.", "permission denied for tool(s): Edit"),  # fmt: skip
        (CLAUDE, "[" + claude_result() + "]", True, "Done.", ""),
        (CLAUDE, json.dumps({"type": "assistant"}), False, "", "not a result message"),
        (GEMINI, json.dumps({"response": "Paris.", "stats": {"models": {}}}), True, "Paris.", ""),
        (GEMINI, json.dumps({"response": "", "stats": {}, "error": {"type": "ApiError", "message": "quota", "code": 429}}),
         False, "", "ApiError: quota"),  # fmt: skip
        (GEMINI, json.dumps({"stats": {}}), False, "", "neither 'response' nor 'error'"),
        (CODEX, codex_lines({"type": "turn.started"}, MESSAGE, COMPLETED), True, "Fixed add().", ""),
        (CODEX, codex_lines({"type": "turn.started"}, {"type": "turn.failed", "error": {"message": "stream disconnected"}}),
         False, "", "stream disconnected"),  # fmt: skip
        (CODEX, codex_lines({"type": "turn.started"}, {"type": "error", "message": "unexpected status 401"}),
         False, "", "unexpected status 401"),  # fmt: skip
        # a reconnect error the turn recovered from is not a failure
        (CODEX, codex_lines({"type": "error", "message": "Reconnecting... 1/5"}, MESSAGE, COMPLETED), True, "Fixed add().", ""),
        (CODEX, codex_lines({"type": "turn.started"}, MESSAGE), False, "Fixed add().", "without turn.completed"),
        # non-fatal error items (config warnings) do not fail a completed turn
        (CODEX, codex_lines({"type": "item.completed", "item": {"id": "i", "type": "error", "message": "warn"}}, COMPLETED),
         True, "", ""),  # fmt: skip
    ],
)
def test_parse_documented_shapes(preset, stdout, ok, summary, error):
    report = parse_agent_output(preset, stdout)
    assert report.ok is ok, report
    assert report.summary == summary
    assert (error in report.error) if error else report.error == ""


@pytest.mark.parametrize("preset", [CLAUDE, GEMINI, CODEX, AgentPreset("other", ("x",), "json")])
@pytest.mark.parametrize("stdout", ["", "   \n", "Traceback (most recent call last):\n  boom", "{not json", "<html>502</html>", "42"])
def test_garbage_output_is_a_failure_with_an_explanation(preset, stdout):
    report = parse_agent_output(preset, stdout)
    assert report.ok is False
    assert report.error  # says why
    assert preset.name in report.error or "codex" in report.error or "not a JSON object" in report.error


def test_json_after_a_banner_is_found():
    stdout = "Loaded cached credentials.\nWarning: something\n" + json.dumps({"response": "hi", "stats": {}}, indent=2)
    assert parse_agent_output(GEMINI, stdout) == AgentReport(True, summary="hi")
    stdout = "npm warn deprecated\n" + claude_result() + "\n"
    assert parse_agent_output(CLAUDE, stdout).ok is True


# --------------------------------------------------------------------------------------------
# the verdict
# --------------------------------------------------------------------------------------------

FAILED = AgentReport(False, error="is_error: API Error: 500")
OK = AgentReport(True, summary="done")
AIDER_OUTAGE = "litellm.InternalServerError: InternalServerError: OpenAIException - fake server\nRetrying in 0.2 seconds..."


@pytest.mark.parametrize(
    ("exit_code", "report", "changed", "tail", "outcome", "reason"),
    [
        (0, OK, 2, "", "success", "changed 2 file(s)"),
        (0, None, 1, "Applied edit to calc.py", "success", "changed 1 file(s)"),
        # nothing needed: no change, no error anywhere -> success (the gate decides)
        (0, OK, 0, "No changes are needed.", "success", "nothing needed"),
        (0, None, 0, "0 errors, 0 warnings", "success", "nothing needed"),
        # aider after an outage: exit 0, no change, error printed -> tool_error
        (0, None, 0, AIDER_OUTAGE, "tool_error", "litellm.InternalServerError"),
        (1, None, 0, AIDER_OUTAGE, "tool_error", "changed no file"),
        (0, None, 0, "Traceback (most recent call last):\n  File x", "tool_error", "Traceback"),
        (0, None, 0, "The LLM did not conform to the edit format.", "tool_error", "did not conform"),
        # structured is_error with exit 0 -> tool_error, with or without changes
        (0, FAILED, 0, "", "tool_error", "API Error: 500"),
        (0, FAILED, 3, "", "tool_error", "reported a failed turn"),
        # a non-zero exit or none at all
        (2, OK, 1, "", "tool_error", "exit code 2"),
        (None, None, 1, "", "tool_error", "no exit code"),
        (-9, None, 0, "", "tool_error", "exit code -9"),
        # errors printed but the agent did change files (retried, then succeeded) -> success
        (0, None, 1, AIDER_OUTAGE + "\nApplied edit to calc.py", "success", "changed 1 file(s)"),
    ],
)
def test_classify_agent_attempt(exit_code, report, changed, tail, outcome, reason):
    verdict = classify_agent_attempt(exit_code, report, changed, tail)
    assert verdict.outcome == outcome, verdict
    assert verdict.error_class == ("" if outcome == "success" else "tool_error")
    assert reason in verdict.reason


def test_error_markers_are_specific():
    assert error_marker("litellm.AuthenticationError: bad key") is not None
    assert error_marker("APIError: boom") is not None
    assert error_marker("ERROR: failed") is not None
    for harmless in ("0 errors", "error-free run", "terror", "Tokens: 10 sent, 10 received."):
        assert error_marker(harmless) is None, harmless


# --------------------------------------------------------------------------------------------
# end to end with a stand-in CLI in a subprocess
# --------------------------------------------------------------------------------------------

STAND_IN = textwrap.dedent(
    r'''
    import json, os, sys
    from pathlib import Path

    mode = os.environ["FAKE_AGENT_MODE"]
    Path(os.environ["FAKE_AGENT_ARGV"]).write_text(json.dumps(sys.argv[1:]))
    if os.environ.get("FAKE_AGENT_EDIT"):
        Path(os.environ["FAKE_AGENT_EDIT"]).write_text("def add(a, b):\n    return a + b\n")
    def out(doc): print(json.dumps(doc), flush=True)
    if mode == "claude-success":
        out({"type": "result", "subtype": "success", "is_error": False, "result": "Fixed it.", "num_turns": 3})
    elif mode == "claude-is-error":  # API failure reported as a result, exit 0
        out({"type": "result", "subtype": "success", "is_error": True, "result": "API Error: 529 overloaded"})
    elif mode == "gemini-success":
        out({"response": "Nothing to change.", "stats": {"models": {}}})
    elif mode == "gemini-error":
        out({"response": "", "stats": {}, "error": {"type": "FatalAuthenticationError", "message": "no key", "code": 41}})
        sys.exit(1)
    elif mode == "codex-success":
        for e in ({"type": "thread.started", "thread_id": "t"}, {"type": "turn.started"},
                  {"type": "item.completed", "item": {"id": "item_0", "type": "agent_message", "text": "Done."}},
                  {"type": "turn.completed", "usage": {"input_tokens": 1, "cached_input_tokens": 0, "output_tokens": 1}}):
            out(e)
    elif mode == "codex-failed":  # failed turn, exit 0
        for e in ({"type": "thread.started", "thread_id": "t"}, {"type": "turn.started"},
                  {"type": "error", "message": "stream error: 500 Internal Server Error"},
                  {"type": "turn.failed", "error": {"message": "stream error: 500 Internal Server Error"}}):
            out(e)
    elif mode == "garbage":
        print("Segmentation fault (core dumped)?? <html>Bad Gateway</html>")
    '''
)


@pytest.fixture
def stand_in(tmp_path):
    script = tmp_path / "fake-agent"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    work = tmp_path / "work"
    work.mkdir()
    (work / "calc.py").write_text("def add(a, b):\n    return a - b\n")

    def run(preset: AgentPreset, mode: str, edit: bool = False, prompt: str = "fix add()"):
        before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
        env = {**os.environ, "FAKE_AGENT_MODE": mode, "FAKE_AGENT_ARGV": str(tmp_path / "argv.json")}
        if edit:
            env["FAKE_AGENT_EDIT"] = str(work / "calc.py")
        completed = subprocess.run(
            agent_argv(preset, prompt, executable=str(script)),
            cwd=work, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        after = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
        changed = sum(1 for p in after.keys() | before.keys() if before.get(p) != after.get(p))
        report = parse_agent_output(preset, completed.stdout)
        verdict = classify_agent_attempt(completed.returncode, report, changed, (completed.stdout + completed.stderr)[-4000:])
        received = json.loads((tmp_path / "argv.json").read_text())
        return completed.returncode, report, verdict, received

    return run


def test_stand_in_claude_success_with_an_edit(stand_in):
    code, report, verdict, argv = stand_in(CLAUDE, "claude-success", edit=True, prompt="fix {this} now")
    assert argv == ["-p", "fix {this} now", "--output-format", "json"]
    assert (code, report) == (0, AgentReport(True, summary="Fixed it."))
    assert (verdict.outcome, verdict.reason) == ("success", "changed 1 file(s)")


def test_stand_in_claude_is_error_with_exit_0_is_a_tool_error(stand_in):
    code, report, verdict, _ = stand_in(CLAUDE, "claude-is-error")
    assert code == 0 and report.ok is False
    assert verdict.outcome == "tool_error" and verdict.error_class == "tool_error"
    assert "API Error: 529" in verdict.reason


def test_stand_in_no_change_with_an_error_printed_is_a_tool_error(stand_in):
    code, report, verdict, _ = stand_in(GEMINI, "gemini-error")
    assert code == 1 and report.error == "FatalAuthenticationError: no key"
    assert verdict.outcome == "tool_error" and "changed no file" in verdict.reason
    code, report, verdict, _ = stand_in(CODEX, "codex-failed")
    assert code == 0 and report.ok is False
    assert verdict.outcome == "tool_error" and "500 Internal Server Error" in verdict.reason


def test_stand_in_no_change_and_no_error_is_a_success(stand_in):
    for preset, mode in ((GEMINI, "gemini-success"), (CODEX, "codex-success")):
        code, report, verdict, argv = stand_in(preset, mode)
        assert code == 0 and report.ok, report
        assert verdict.outcome == "success" and "nothing needed" in verdict.reason
    assert argv == ["exec", "--json", "fix add()"]


def test_stand_in_garbage_output(stand_in):
    for preset in (CLAUDE, GEMINI, CODEX):
        code, report, verdict, _ = stand_in(preset, "garbage")
        assert code == 0 and report.ok is False and "output" in report.error
        assert verdict.outcome == "tool_error", verdict
        # even with a change, an agent whose output cannot be read is not trusted
        _, _, verdict, _ = stand_in(preset, "garbage", edit=True)
        assert verdict.outcome == "tool_error"


# --------------------------------------------------------------------------------------------
# the fake OpenAI server itself
# --------------------------------------------------------------------------------------------


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_fake_openai_scripted_replies_and_recording():
    edit = whole_edit("calc.py", "x = 1")
    assert edit.splitlines()[2:] == ["calc.py", "```", "x = 1", "```"]
    with FakeOpenAI([edit, error_reply(500, "down")]) as server:
        url = server.base_url + "/chat/completions"
        code, body = _post(url, {"model": "fake-model", "messages": [{"role": "user", "content": "round 1"}]})
        assert code == 200 and body["choices"][0]["message"]["content"] == edit
        code, body = _post(url, {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "r2"}]}]})
        assert code == 500 and body["error"]["message"] == "down"
        code, body = _post(url, {"messages": []})
        assert code == 500 and "no scripted reply" in body["error"]["message"]
        with urllib.request.urlopen(server.base_url + "/models", timeout=10) as response:
            assert json.loads(response.read())["data"][0]["id"] == "fake-model"
        assert [prompt_text(b) for b in server.chat_requests] == ["round 1", "r2", ""]
        assert server.foreign_requests == []


def test_fake_openai_streams_when_asked_and_catches_proxied_requests():
    with FakeOpenAI(["hello"]) as server:
        request = urllib.request.Request(
            server.base_url + "/chat/completions", json.dumps({"stream": True, "messages": []}).encode()
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "hello"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": server.proxy_url}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open("http://example.invalid/model_prices.json", timeout=10)
        assert refused.value.code == 403
        assert [r.path for r in server.foreign_requests] == ["http://example.invalid/model_prices.json"]
