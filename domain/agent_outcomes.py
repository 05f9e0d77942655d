"""Whose failure it is when a coding agent reports a failed turn: the tool's, or the task's.

Every agent CLI can exit 0 after a failed turn, so its structured result is what counts (see
:mod:`adapters.agents` for reading it). This module decides, per preset, what a failure means,
because the circuit breaker must hear only of a *tool* that is down (:mod:`domain.outcomes`):

- ``tool`` — the tool could not do any work: the API failed (5xx, overloaded, rate limited,
  quota, authentication), the transport dropped, the CLI crashed mid-turn, its output could not
  be read. Error class ``tool_error``: counted by the breaker, retried per policy, and a
  fallback adapter may take the next attempt.
- ``task`` — the tool worked, and the task did not get done within the limits it was given: it
  ran out of turns, of its own budget, of context. Error class ``command_failed``: the task's
  outcome (retries per ``retry.on``), nothing against the tool.
- ``config`` — the tool worked and refused what it was asked, as configured: permission
  prompts denied in headless mode, bad input, a sandbox or settings error. Error class
  ``bad_input``: never retried (it would be refused again); the message says what to change.

The tables, from the tools' sources and docs:

========== ================================================== ========
preset     structured result                                  blame
========== ================================================== ========
claude     ``subtype: success``, ``is_error: false``           (ok)
claude     ``subtype: success``, ``is_error: true`` (API error) tool
claude     ``error_during_execution``                          tool
claude     ``error_max_turns``                                 task
claude     ``error_max_budget_usd``                            task
claude     ``error_max_structured_output_retries``             task
claude     ``permission_denials`` not empty                     config
codex      last ``turn.completed``                              (ok)
codex      ``turn.failed`` / a trailing ``error`` event         tool
codex      … whose message is about the context window          task
gemini     ``error.type`` ``FatalTurnLimitedError`` (exit 53)   task
gemini     ``FatalInputError`` (42), ``FatalSandboxError`` (44), config
           ``FatalConfigError`` (52)
gemini     ``FatalAuthenticationError`` (41), API errors, others tool
aider      (no structured result) changed nothing, printed an  tool
           error (``litellm.…Error``, a traceback)
========== ================================================== ========
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.errors import ErrorClass


class Blame(StrEnum):
    TOOL = "tool"
    TASK = "task"
    CONFIG = "config"


_ERROR_CLASS = {Blame.TOOL: ErrorClass.TOOL_ERROR, Blame.TASK: ErrorClass.COMMAND_FAILED,
                Blame.CONFIG: ErrorClass.BAD_INPUT}


def error_class_of(blame: Blame) -> ErrorClass:
    """The error class a failed turn with this blame ends its attempt with."""
    return _ERROR_CLASS[blame]


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What the agent said about its turn: ``ok`` and its final message, or the error and
    whose failure it is (``blame``, meaningful when not ``ok``)."""

    ok: bool
    summary: str = ""
    error: str = ""
    blame: Blame = Blame.TOOL


# Claude Code's result subtypes (SDKResultMessage): the ones that mean a limit was reached.
CLAUDE_LIMIT_SUBTYPES = frozenset({"error_max_turns", "error_max_budget_usd", "error_max_structured_output_retries"})


def claude_blame(subtype: str | None, denied_tools: bool) -> Blame:
    """Whose failure a failed Claude Code result is (see the table)."""
    if subtype in CLAUDE_LIMIT_SUBTYPES:
        return Blame.TASK
    if denied_tools and (subtype in (None, "success")):
        return Blame.CONFIG
    return Blame.TOOL


# Gemini CLI's FatalError subclasses (packages/core/src/utils/errors.ts) and their exit codes.
GEMINI_TASK_ERRORS = {"FatalTurnLimitedError": 53}
GEMINI_CONFIG_ERRORS = {"FatalInputError": 42, "FatalSandboxError": 44, "FatalConfigError": 52}


def gemini_blame(error_type: str | None, code: object) -> Blame:
    """Whose failure Gemini CLI's ``error`` object (``type``, ``code``) is (see the table)."""
    if error_type in GEMINI_TASK_ERRORS or code in GEMINI_TASK_ERRORS.values():
        return Blame.TASK
    if error_type in GEMINI_CONFIG_ERRORS or code in GEMINI_CONFIG_ERRORS.values():
        return Blame.CONFIG
    return Blame.TOOL


_CONTEXT_EXHAUSTED = ("context window", "context length", "maximum context", "context_length_exceeded")


def codex_blame(message: str) -> Blame:
    """Whose failure a Codex ``turn.failed`` / ``error`` message is: running out of context is
    the task's (too big for the model), anything else (stream, HTTP status, auth) the tool's."""
    lowered = message.lower()
    return Blame.TASK if any(marker in lowered for marker in _CONTEXT_EXHAUSTED) else Blame.TOOL
