"""AI coding agents as tools: their command lines, their structured output, and the verdict.

Pure: no I/O except reading a file a caller names (none today), no threads, no processes.
What an agent's attempt *did* is judged here from facts the runtime gathers (exit code, the
agent's structured output, how many files changed in its worktree, the tail of its log),
because every one of these CLIs can exit 0 after a failed turn:

- **aider** exits 0 after API errors (it retries a 5xx for about a minute, then gives up and
  still exits 0), after rejected or malformed edits, and after failing tests. Its only
  trustworthy results are the files it changed and our own acceptance gate.
- **Claude Code** (``claude -p --output-format json``) prints one result object whose
  ``is_error`` / ``subtype`` tell the truth even when the exit code does not.
- **Gemini CLI** (``gemini -p --output-format json``) prints ``{"response", "stats", "error"?}``.
- **Codex CLI** (``codex exec --json``) prints JSONL events; the turn's outcome is its last
  ``turn.completed`` or ``turn.failed`` event.

The rule, :func:`classify_agent_attempt`, is in one place so every agent adapter shares it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from domain.agent_outcomes import AgentReport, Blame, claude_blame, codex_blame, error_class_of, gemini_blame
from domain.errors import ErrorClass

# --------------------------------------------------------------------------------------------
# aider
# --------------------------------------------------------------------------------------------

#: Flags that make aider non-interactive, quiet and offline-safe (see FIELD-NOTES).
AIDER_HEADLESS_FLAGS: tuple[str, ...] = (
    "--yes-always",
    "--no-auto-commits",
    "--no-stream",
    "--no-analytics",
    "--no-check-update",
    "--no-show-model-warnings",
    "--no-show-release-notes",
    "--map-tokens",
    "0",
    "--no-gitignore",
)

#: Environment aider needs to make no network request of its own. litellm downloads its model
#: price map from GitHub when it is imported unless told to use the copy it ships; the flags
#: above cover aider's own version check and analytics, and ``--model-metadata-file`` covers
#: aider's model-info lookup (checked: with these, aider contacts only ``--openai-api-base``).
AIDER_ENVIRONMENT: tuple[tuple[str, str], ...] = (("LITELLM_LOCAL_MODEL_COST_MAP", "True"),)

#: Files aider writes into the repository it works in (chat and input history, the repo-map
#: cache). With ``--no-gitignore`` nothing ignores them, so a change count taken with
#: ``git add -A`` would count them as the agent's work. :class:`AiderSettings` sends the two
#: histories to /dev/null by default; :func:`substantive_changes` filters them out anyway.
AIDER_BOOKKEEPING_PREFIX = ".aider"


@dataclass(frozen=True, slots=True, kw_only=True)
class AiderSettings:
    """How to run aider. ``api_base`` set means an OpenAI-compatible server: the model is
    addressed as ``openai/<model>`` and the key is passed along (any string will do for a
    local server)."""

    model: str
    executable: str = "aider"
    api_base: str | None = None
    api_key: str = "x"
    edit_format: str | None = None  # "whole", "diff", "udiff", ... (aider's default if None)
    extra_args: tuple[str, ...] = ()
    model_metadata_file: str | None = None  # JSON naming the model's context size (no lookup)
    # Where aider keeps its chat and input history. Default: nowhere, so the worktree holds only
    # the agent's edits (aider's stdout, which the runtime logs, has the whole transcript).
    # None leaves aider's default: .aider.chat.history.md / .aider.input.history in the repo.
    chat_history_file: str | None = os.devnull
    input_history_file: str | None = os.devnull

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AiderSettings:
        """Settings from ``ORCHESTRATE_AIDER`` (executable), ``ORCHESTRATE_AIDER_MODEL``
        (required), ``ORCHESTRATE_AIDER_API_BASE``, ``ORCHESTRATE_AIDER_API_KEY``, and the
        optional ``ORCHESTRATE_AIDER_EDIT_FORMAT`` and ``ORCHESTRATE_AIDER_MODEL_METADATA_FILE``.
        Empty values count as unset. Raises ValueError when no model is named."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        model = get("ORCHESTRATE_AIDER_MODEL")
        if model is None:
            raise ValueError("ORCHESTRATE_AIDER_MODEL is not set: name the model aider should use")
        return cls(
            model=model,
            executable=get("ORCHESTRATE_AIDER") or "aider",
            api_base=get("ORCHESTRATE_AIDER_API_BASE"),
            api_key=get("ORCHESTRATE_AIDER_API_KEY") or "x",
            edit_format=get("ORCHESTRATE_AIDER_EDIT_FORMAT"),
            model_metadata_file=get("ORCHESTRATE_AIDER_MODEL_METADATA_FILE"),
        )

    @property
    def model_name(self) -> str:
        """The name aider is given: ``openai/<model>`` against an OpenAI-compatible server."""
        if self.api_base and not self.model.startswith("openai/"):
            return f"openai/{self.model}"
        return self.model


def _safe_positional(value: str) -> str:
    # A file named "-x" would be read as an option.
    return f"./{value}" if value.startswith("-") else value


def aider_argv(settings: AiderSettings, prompt: str, files: Sequence[str]) -> tuple[str, ...]:
    """aider's command line: one message, headless, then the files it may edit."""
    # "--message=-x" keeps a prompt that starts with a dash from being read as an option.
    message = ("--message", prompt) if not prompt.startswith("-") else (f"--message={prompt}",)
    argv: list[str] = [settings.executable, *message, *AIDER_HEADLESS_FLAGS, "--model", settings.model_name]
    if settings.api_base:
        argv += ["--openai-api-base", settings.api_base, "--openai-api-key", settings.api_key]
    if settings.model_metadata_file:
        argv += ["--model-metadata-file", settings.model_metadata_file]
    if settings.edit_format:
        argv += ["--edit-format", settings.edit_format]
    if settings.chat_history_file:
        argv += ["--chat-history-file", settings.chat_history_file]
    if settings.input_history_file:
        argv += ["--input-history-file", settings.input_history_file]
    argv += settings.extra_args
    argv += [_safe_positional(f) for f in files]
    return tuple(argv)


def aider_environment(settings: AiderSettings) -> tuple[tuple[str, str], ...]:
    """Environment variables to add to aider's process (see :data:`AIDER_ENVIRONMENT`)."""
    return AIDER_ENVIRONMENT


def substantive_changes(paths: Sequence[str]) -> tuple[str, ...]:
    """The changed paths that are the agent's work: without aider's own bookkeeping files
    (``.aider*`` at any depth), which a worktree diff would otherwise count."""
    def ours(path: str) -> bool:
        return any(part.startswith(AIDER_BOOKKEEPING_PREFIX) for part in path.replace("\\", "/").split("/"))

    return tuple(p for p in paths if not ours(p))


# --------------------------------------------------------------------------------------------
# Generic agent CLIs with structured output
# --------------------------------------------------------------------------------------------

OutputKind = Literal["json", "jsonl"]


@dataclass(frozen=True, slots=True)
class AgentPreset:
    """An agent CLI: its argv template and the kind of structured output it prints on stdout.

    Template elements may contain ``{prompt}`` (replaced literally, never ``str.format``-ed,
    so braces in a prompt are safe); an element that is exactly ``{files}`` expands to one
    argument per file (and to nothing when there are none)."""

    name: str
    argv_template: tuple[str, ...]
    output: OutputKind


# Note: as templated here these CLIs run with their default permissions. To let them edit files
# unattended add the CLI's own flag: codex `--full-auto` (or `--sandbox workspace-write`),
# claude `--permission-mode acceptEdits`, gemini `--approval-mode auto_edit` / `--yolo`.
CODEX = AgentPreset("codex", ("codex", "exec", "--json", "{prompt}"), "jsonl")
CLAUDE = AgentPreset("claude", ("claude", "-p", "{prompt}", "--output-format", "json"), "json")
GEMINI = AgentPreset("gemini", ("gemini", "-p", "{prompt}", "--output-format", "json"), "json")
PRESETS: Mapping[str, AgentPreset] = {p.name: p for p in (CODEX, CLAUDE, GEMINI)}


def agent_argv(
    preset: AgentPreset, prompt: str, files: Sequence[str] = (), executable: str | None = None
) -> tuple[str, ...]:
    """The preset's argv with ``{prompt}`` and ``{files}`` filled in; ``executable`` replaces
    the program (argv[0]), e.g. an absolute path or a stand-in in tests."""
    argv: list[str] = []
    for element in preset.argv_template:
        if element == "{files}":
            argv.extend(_safe_positional(f) for f in files)
        elif "{files}" in element:
            raise ValueError(f"{preset.name}: '{{files}}' must be a whole argument, not part of {element!r}")
        else:
            argv.append(element.replace("{prompt}", prompt))
    if not argv:
        raise ValueError(f"{preset.name}: empty argv template")
    if executable:
        argv[0] = executable
    return tuple(argv)


def _clip(text: str, limit: int = 500) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _load_json(stdout: str) -> Any:
    """The JSON document in ``stdout``: the whole text, else the last line that parses, else
    the first object/array that starts a line (a CLI may print a banner or warnings first).
    Raises ValueError when there is none."""
    text = stdout.strip()
    if not text:
        raise ValueError("empty output")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    lines = text.splitlines()
    for line in reversed(lines):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^[ \t]*[{\[]", text, re.MULTILINE):
        try:
            document, _ = decoder.raw_decode(text, match.end() - 1)
            return document
        except json.JSONDecodeError:
            continue
    raise ValueError(f"no JSON document in output: {_clip(text, 200)!r}")


def _message_of(value: Any) -> str:
    """An error's text, from a string, ``{"message": ...}`` or ``{"type", "message"}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        message = value.get("message")
        kind = value.get("type")
        if isinstance(message, dict):  # {"error": {"message": {...}}} - nested once more
            message = _message_of(message)
        if message and kind:
            return f"{kind}: {message}"
        if message:
            return str(message)
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return "; ".join(_message_of(v) for v in value if v)
    return str(value)


def _parse_claude(document: Any) -> AgentReport:
    # `--output-format json` prints one result object; some versions (with --verbose) print
    # the whole message list, whose last `result` entry is the one that counts.
    if isinstance(document, list):
        results = [m for m in document if isinstance(m, dict) and m.get("type") == "result"]
        if not results:
            return AgentReport(False, error="claude output has no result message")
        document = results[-1]
    if not isinstance(document, dict):
        return AgentReport(False, error=f"claude output is not a JSON object: {type(document).__name__}")
    if document.get("type") != "result":
        return AgentReport(False, error=f"claude output is not a result message (type={document.get('type')!r})")
    subtype = document.get("subtype")
    result = document.get("result") if isinstance(document.get("result"), str) else ""
    failed = bool(document.get("is_error")) or (subtype is not None and subtype != "success")
    if failed:
        # A failed API call comes as subtype "success" + is_error, the message in `result`;
        # error_* subtypes carry `errors` (a list) and often no `result`.
        detail = result or _message_of(document.get("errors") or "")
        label = subtype if subtype and subtype != "success" else "is_error"
        return AgentReport(False, error=_clip(f"{label}: {detail}" if detail else label),
                           blame=claude_blame(subtype, False))
    # A turn whose tool calls were refused reports success, but did not do what it was asked.
    denials = document.get("permission_denials")
    if isinstance(denials, list) and denials:
        tools = sorted({str(d.get("tool_name", "?")) for d in denials if isinstance(d, dict)}) or ["?"]
        return AgentReport(False, summary=_clip(result), blame=claude_blame(subtype, True),
                           error=f"permission denied for tool(s): {', '.join(tools)}; let it edit unattended "
                                 "(e.g. claude --permission-mode acceptEdits)")
    return AgentReport(True, summary=_clip(result))


def _parse_gemini(document: Any) -> AgentReport:
    if not isinstance(document, dict):
        return AgentReport(False, error=f"gemini output is not a JSON object: {type(document).__name__}")
    response = document.get("response")
    response = response if isinstance(response, str) else ""
    if document.get("error"):
        error = document["error"]
        kind, code = (error.get("type"), error.get("code")) if isinstance(error, dict) else (None, None)
        return AgentReport(False, summary=_clip(response), error=_clip(_message_of(error)),
                           blame=gemini_blame(kind if isinstance(kind, str) else None, code))
    if "response" not in document:
        return AgentReport(False, error="gemini output has neither 'response' nor 'error'")
    return AgentReport(True, summary=_clip(response))


def _parse_codex(stdout: str) -> AgentReport:
    events: list[dict] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            events.append(event)
    if not events:
        return AgentReport(False, error=f"no JSON events in codex output: {_clip(stdout, 200)!r}")
    last_message = ""
    outcome: str | None = None  # "completed" | "failed", from the last turn.* event
    failure = ""
    stream_error = ""  # an `error` event not followed by a completed turn
    for event in events:
        kind = event["type"]
        if kind == "item.completed":
            item = event.get("item") or {}
            if isinstance(item, dict) and item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                last_message = item["text"]
        elif kind == "turn.completed":
            outcome, failure, stream_error = "completed", "", ""
        elif kind == "turn.failed":
            outcome, failure = "failed", _message_of(event.get("error") or "turn failed")
        elif kind == "error":
            stream_error = _message_of(event.get("message") or event.get("error") or "error event")
    if outcome == "failed":
        said = failure or stream_error or "turn failed"
        return AgentReport(False, summary=_clip(last_message), error=_clip(said), blame=codex_blame(said))
    if stream_error:
        return AgentReport(False, summary=_clip(last_message), error=_clip(stream_error), blame=codex_blame(stream_error))
    if outcome != "completed":
        return AgentReport(False, summary=_clip(last_message), error="codex output ended without turn.completed")
    return AgentReport(True, summary=_clip(last_message))


def _parse_generic(preset: AgentPreset, stdout: str) -> AgentReport:
    if preset.output == "jsonl":
        return _parse_codex(stdout)
    document = _load_json(stdout)
    if isinstance(document, dict) and document.get("type") == "result":
        return _parse_claude(document)
    if isinstance(document, dict) and ("response" in document or "error" in document):
        return _parse_gemini(document)
    if isinstance(document, dict):
        ok = not document.get("is_error", False)
        return AgentReport(ok, summary=_clip(str(document.get("result", ""))), error="" if ok else "is_error")
    return AgentReport(False, error=f"{preset.name} output is not a JSON object")


def parse_agent_output(preset: AgentPreset, stdout: str) -> AgentReport:
    """The agent's own account of its turn, from its stdout. Never raises: output that is
    empty, not JSON or of an unexpected shape gives ``ok=False`` with the reason."""
    try:
        if preset.name == "codex" or (preset.output == "jsonl" and preset.name not in ("claude", "gemini")):
            return _parse_codex(stdout)
        if preset.name == "claude":
            return _parse_claude(_load_json(stdout))
        if preset.name == "gemini":
            return _parse_gemini(_load_json(stdout))
        return _parse_generic(preset, stdout)
    except ValueError as error:
        return AgentReport(False, error=f"{preset.name}: unreadable output ({error})")
    except Exception as error:  # noqa: BLE001 - a parser bug must not lose the attempt
        return AgentReport(False, error=f"{preset.name}: could not parse output ({type(error).__name__}: {error})")


# --------------------------------------------------------------------------------------------
# The verdict: did the agent do anything?
# --------------------------------------------------------------------------------------------

Outcome = Literal["success", "tool_error", "task_failed", "bad_input"]
_OUTCOME_OF = {Blame.TOOL: "tool_error", Blame.TASK: "task_failed", Blame.CONFIG: "bad_input"}


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    error_class: str  # "" on success, else an ErrorClass value ("tool_error")
    reason: str


# Case-sensitive on purpose: "Error"/"Exception" as (the end of) a capitalised word, so
# "InternalServerError", "APIError", "ValueError:" match and "0 errors" does not.
_ERROR_MARKERS = re.compile(
    r"Traceback \(most recent call last\)"
    r"|\blitellm\.\w+"
    r"|(?<![a-z])(?:[A-Z][A-Za-z]*)?(?:Error|Exception)\b"
    r"|\bERROR\b"
    r"|\bfatal:"
    r"|did not conform to the edit format"
)


def error_marker(output: str) -> str | None:
    """The first line of ``output`` that looks like an error report, or None."""
    for line in output.splitlines():
        if _ERROR_MARKERS.search(line):
            return _clip(line, 200)
    return None


def classify_agent_attempt(
    exit_code: int | None, report: AgentReport | None, changed_files: int, output_tail: str
) -> Verdict:
    """Judge an agent attempt; the exit code alone is never trusted to mean success.

    In order:

    1. **Changed no file and printed an error** (the agent's structured report says it failed,
       or the output tail has an error marker: ``Traceback``, ``litellm.…``, ``…Error``,
       ``…Exception``, ``ERROR``) → ``tool_error``, *whatever the exit code*. This is aider
       after an API outage: it retries, gives up, and exits 0.
    0. **A structured failure that is not the tool's** (:mod:`domain.agent_outcomes`: max
       turns, its own budget, context exhausted → ``task_failed``/``command_failed``;
       permission refusals, bad input → ``bad_input``): the tool worked, the task is not done.
       The circuit breaker hears nothing against the tool.
    2. **A structured failure** (``is_error: true``, an ``error`` object, ``turn.failed``) →
       ``tool_error`` even with exit 0 and even if files changed: edits of a turn the agent
       itself reports as failed (e.g. it crashed mid-turn) are not trusted.
    3. **A non-zero exit code**, or none (killed by a signal) → ``tool_error``.
    4. Otherwise **success**: with changed files the acceptance gate judges them next; with
       *no* changed file and no error anywhere it is still a success, because "nothing needed
       changing" is a legitimate answer (the task's acceptance checks decide whether the
       work is really done). Error-looking text in the output of an attempt that did change
       files is not enough to fail it (aider prints retried API errors, then succeeds).

    ``changed_files`` should count the agent's work only (see :func:`substantive_changes`).
    """
    failed = ErrorClass.TOOL_ERROR.value
    structured_failure = report is not None and not report.ok
    marker = error_marker(output_tail) if output_tail else None
    exit_text = "no exit code" if exit_code is None else f"exit code {exit_code}"

    if structured_failure and report is not None and report.blame is not Blame.TOOL:
        # The tool worked; the turn hit a limit or was refused: the task's outcome, whatever
        # the exit code and however many files it touched.
        detail = report.error or "no detail"
        facts = f"{exit_text}, {changed_files} file(s) changed"
        return Verdict(_OUTCOME_OF[report.blame], error_class_of(report.blame).value,  # type: ignore[arg-type]
                       f"the agent's turn did not finish the task ({facts}): {detail}")
    if changed_files <= 0 and (structured_failure or marker):
        said = report.error if structured_failure and report is not None and report.error else (marker or "an error")
        return Verdict("tool_error", failed, f"changed no file and reported an error ({exit_text}): {said}")
    if structured_failure and report is not None:
        detail = report.error or "no detail"
        facts = f"{exit_text}, {changed_files} file(s) changed"
        return Verdict("tool_error", failed, f"the agent reported a failed turn ({facts}): {detail}")
    if exit_code is None or exit_code != 0:
        detail = f": {marker}" if marker else ""
        return Verdict("tool_error", failed, f"the agent did not exit cleanly ({exit_text}){detail}")
    if changed_files > 0:
        return Verdict("success", "", f"changed {changed_files} file(s)")
    return Verdict("success", "", "changed no file and reported no error (nothing needed changing)")
