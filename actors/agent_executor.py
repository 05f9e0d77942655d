"""The executor of coding agents (aider, and agent CLIs such as codex, claude, gemini).

One attempt is a loop of *rounds*, all in the task's cwd: the agent runs with the task's
prompt; the runtime judges what it did (:func:`adapters.agents.classify_agent_attempt`: its
exit code, its structured report, how many files it changed, its output); then the task's
acceptance checks run (:mod:`adapters.gates`, static phase first, then runtime). When a check
fails and fix rounds are left (``task.max_fix_rounds``), the agent runs again with the failure
in its prompt and the checks run again. Like :class:`actors.executor.ExecutorActor` it never
blocks its mailbox on a process: the :class:`ProcessReactor` tells it a :class:`ProcessExited`.

What the Scheduler hears, per attempt: :class:`AttemptStarted` (pid of the first agent
process), :class:`TaskValidating` at the start of each check phase of each round,
:class:`TaskFixing` before each fix round, and one :class:`AttemptFinished`:

- COMPLETED: every check passed (message: ``completed`` or ``completed after N fix round(s)``).
- FAILED ``tool_error``: the verdict on a round was tool_error (e.g. an agent that exits 0
  after an API failure); no fix round follows, since the agent, not the code, failed.
- FAILED ``command_failed`` / ``bad_input``: the agent's structured result says its turn hit
  a limit (max turns, its budget, its context) or was refused (permissions): see
  :mod:`domain.agent_outcomes`. Not the tool's fault, so the breaker hears nothing of it.
- FAILED ``gate``: a check still failed when the fix rounds were used up; ``gate_output``
  holds the failure of every round. A check that timed out counts as a failed gate too (the
  agent may have written the hang), so it gets fix rounds.
- FAILED ``bad_input``: the adapter is misconfigured, the task has no prompt, or the agent or
  a check could not start (or, as above, the agent was refused what it needed).
- TIMEOUT / FAILED ``resource_limit``: the agent process hit the task's limits (per round).
- CANCELLED: a :class:`CancelAttempt` killed the agent or check running then.

Logs: each round appends ``== round N ==`` and the agent's output (stdout and stderr) to the
task's log; check K appends its own header and output to ``<log>.checkK.log``.

**Reading an agent's structured output.** Agent CLIs print their report (JSON or JSONL) on
stdout, and the log interleaves stdout with stderr. Rather than wrapping the CLI in a shell to
split the streams (another process in the tree, and a log without the report), the report is
parsed from this round's part of the log (from the offset recorded after its header); the
parsers find the last JSON document or the JSONL events among other lines. A CLI that prints
JSON-looking lines on stderr after its report could confuse this; none of the presets does.

**Changed files.** ``git status --porcelain -z --untracked-files=all`` in the cwd, taken before
and after each round, each path with its mtime and size: a path counts as changed by the round
when its entry differs. So a fix round that edits a file an earlier round already changed
counts, and files dirty before the attempt do not. Outside a git work tree (or when git fails)
the count is unknown and taken as 1, so the "changed nothing and reported an error" rule does
not fire on a guess.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from actors.attempts import attempt_finished, attempt_started, spawn_for_attempt
from actors.base import SupervisedActor
from actors.directory import SCHEDULER, Directory
from adapters.agents import (
    PRESETS,
    AgentPreset,
    AgentReport,
    AiderSettings,
    agent_argv,
    aider_argv,
    aider_environment,
    classify_agent_attempt,
    parse_agent_output,
    substantive_changes,
)
from adapters.gates import (
    check_passed,
    check_spec,
    describe_check_failure,
    failure_reason,
    ordered_checks,
)
from adapters.process import ProcessReactor, ProcessSpec
from adapters.tools import task_environment
from domain.agent_usage import NO_USAGE, AgentUsage, usage_of
from domain.errors import ErrorClass
from domain.failure_lines import summary
from domain.outcomes import ProcessOutcome, ProcessResult, Verdict, tool_verdict
from domain.plan import AcceptanceCheck
from domain.routing import AdapterInfo
from domain.run_events import Phase
from domain.states import TaskState
from messages import ExecuteTask, TaskValidating
from messages.executor import ProcessExited
from messages.runtime import CancelAttempt, TaskFixing
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.agent_executor")

#: How much of a round's output is parsed for the agent's report (a report is printed last).
REPORT_LIMIT = 1024 * 1024
#: How much of the end of an output the verdict and a check failure description look at.
TAIL_LIMIT = 4000
#: The cap on ``gate_output`` (the failures of every round, each shortened alike).
GATE_OUTPUT_LIMIT = 8000
GIT_TIMEOUT_S = 30.0

_AIDER_SETTINGS_ENV = {
    "executable": "ORCHESTRATE_AIDER",
    "model": "ORCHESTRATE_AIDER_MODEL",
    "api_base": "ORCHESTRATE_AIDER_API_BASE",
    "api_key": "ORCHESTRATE_AIDER_API_KEY",
    "edit_format": "ORCHESTRATE_AIDER_EDIT_FORMAT",
    "model_metadata_file": "ORCHESTRATE_AIDER_MODEL_METADATA_FILE",
}
_AGENT_SETTINGS = ("preset", "argv", "output", "executable")


# --------------------------------------------------------------------------------------------
# Configuration: an adapter's settings -> how to run its agent
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """How to run one configured agent: exactly one of ``aider`` and ``preset`` is set."""

    aider: AiderSettings | None = None
    preset: AgentPreset | None = None
    executable: str | None = None

    def argv(self, prompt: str, files: Sequence[str]) -> tuple[str, ...]:
        if self.aider is not None:
            return aider_argv(self.aider, prompt, files)
        assert self.preset is not None
        return agent_argv(self.preset, prompt, files, self.executable)

    def environment(self) -> tuple[tuple[str, str], ...]:
        return aider_environment(self.aider) if self.aider is not None else ()

    @property
    def tool(self) -> str:
        """The tool's name, which says how to read what it used (:func:`usage_of`)."""
        return "aider" if self.aider is not None else self.preset.name if self.preset else ""

    def report(self, output: str) -> AgentReport | None:
        """The agent's own account of its round; None for aider, which prints none."""
        return parse_agent_output(self.preset, output) if self.preset is not None else None


def _text(settings: Mapping[str, object], key: str, where: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: settings.{key} must be a string, not {type(value).__name__}")
    return value


def _strings(settings: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value = settings.get(key) or ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: settings.{key} must be a list of strings")
    return tuple(value)


def _refuse_unknown(settings: Mapping[str, object], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(known)})")


def aider_settings(info: AdapterInfo, env: Mapping[str, str] | None = None) -> AiderSettings:
    """aider's settings: the adapter's ``settings`` where given, else what
    :meth:`AiderSettings.from_env` reads from ``env`` (default ``os.environ``). Raises
    ValueError, naming the adapter, when no model is named or a setting is malformed."""
    where = f"adapter {info.name!r} (aider)"
    settings = dict(info.settings)
    _refuse_unknown(settings, (*_AIDER_SETTINGS_ENV, "extra_args"), where)
    merged = dict(os.environ if env is None else env)
    for key, variable in _AIDER_SETTINGS_ENV.items():
        value = _text(settings, key, where)
        if value is not None:
            merged[variable] = value
    if not merged.get(_AIDER_SETTINGS_ENV["model"], "").strip():
        raise ValueError(f"{where}: no model named: set settings.model or ORCHESTRATE_AIDER_MODEL")
    return replace(AiderSettings.from_env(merged), extra_args=_strings(settings, "extra_args", where))


def agent_command(info: AdapterInfo, env: Mapping[str, str] | None = None) -> AgentCommand:
    """The command of an ``aider`` or ``agent`` adapter; raises ValueError (a message naming the
    adapter and the setting) when its settings cannot work.

    ``agent`` settings: ``preset`` (codex, claude, gemini) or ``argv`` (a template, see
    :class:`AgentPreset`, which must pass ``{prompt}``) with ``output`` ``json`` (the default) or
    ``jsonl``; optional ``executable`` replaces the program."""
    if info.type == "aider":
        return AgentCommand(aider=aider_settings(info, env))
    where = f"adapter {info.name!r} (agent)"
    settings = dict(info.settings)
    _refuse_unknown(settings, _AGENT_SETTINGS, where)
    preset_name = _text(settings, "preset", where)
    template = _strings(settings, "argv", where)
    output = _text(settings, "output", where)
    if preset_name and template:
        raise ValueError(f"{where}: give settings.preset or settings.argv, not both")
    if preset_name:
        if preset_name not in PRESETS:
            raise ValueError(f"{where}: unknown preset {preset_name!r} (known: {', '.join(PRESETS)})")
        if output is not None:
            raise ValueError(f"{where}: settings.output applies to an argv template, not to a preset")
        preset = PRESETS[preset_name]
    elif template:
        if output not in (None, "json", "jsonl"):
            raise ValueError(f"{where}: settings.output must be json or jsonl, not {output!r}")
        if not any("{prompt}" in element for element in template):
            raise ValueError(f"{where}: settings.argv must pass the prompt ('{{prompt}}' in an argument)")
        preset = AgentPreset(info.name, template, "jsonl" if output == "jsonl" else "json")
    else:
        raise ValueError(f"{where}: name settings.preset ({', '.join(PRESETS)}) or give settings.argv")
    command = AgentCommand(preset=preset, executable=_text(settings, "executable", where))
    command.argv("prompt", ("file",))  # a malformed template fails here, not on every task
    return command


# --------------------------------------------------------------------------------------------
# Facts gathered between rounds
# --------------------------------------------------------------------------------------------

_Snapshot = dict[str, tuple[str, int | None, int | None]]


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    # A status refreshes the index unless told not to; another task's git in the same repo
    # would then race for index.lock.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    return env


def _git(cwd: str, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=_git_env(), stdin=subprocess.DEVNULL,
            capture_output=True, timeout=GIT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def worktree_snapshot(cwd: str) -> _Snapshot | None:
    """Every path ``git status`` reports in the work tree holding ``cwd`` (relative to its top),
    with its status and the file's mtime (ns) and size; None when it is not a git work tree."""
    top = _git(cwd, "rev-parse", "--show-toplevel")
    status = _git(cwd, "status", "--porcelain", "-z", "--untracked-files=all")
    if top is None or status is None:
        return None
    root = top.decode("utf-8", "surrogateescape").strip()
    entries = status.decode("utf-8", "surrogateescape").split("\0")
    snapshot: _Snapshot = {}
    position = 0
    while position < len(entries):
        entry = entries[position]
        position += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if "R" in code or "C" in code:
            position += 1  # a rename or copy is followed by its source path
        try:
            info = os.lstat(os.path.join(root, path))
            snapshot[path] = (code, info.st_mtime_ns, info.st_size)
        except OSError:
            snapshot[path] = (code, None, None)
    return snapshot


def changed_between(before: _Snapshot | None, after: _Snapshot | None) -> tuple[str, ...] | None:
    """The agent's changed paths between two snapshots (sorted, without aider's bookkeeping
    files), or None when either is unknown."""
    if before is None or after is None:
        return None
    paths = {p for p, entry in after.items() if before.get(p) != entry} | (set(before) - set(after))
    return substantive_changes(sorted(paths))


def _append_header(path: str, header: str) -> int:
    """Append ``header`` as a line to ``path``; return the file's size after it (where the
    output that follows starts). 0 if the file cannot be written (the spawn will say why)."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{header}\n")
            return handle.tell()
    except OSError:
        return 0


def _read_from(path: str, offset: int, limit: int) -> str:
    """At most the last ``limit`` bytes of ``path`` after ``offset`` (its last bytes, when the
    log was cut below ``offset`` by its size cap: see adapters.logcap)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset if offset <= size else 0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _clip_middle(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters by dropping its middle: the head says which check
    failed and why, the tail holds the output's last lines."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return f"{text[:head]}\n…\n{text[len(text) - (limit - head - 3):]}"


def _fix_rounds(count: int) -> str:
    return f"{count} fix round" + ("" if count == 1 else "s")


# --------------------------------------------------------------------------------------------
# The actor
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    request: ExecuteTask
    started: float
    prompt: str
    round: int = 0
    process: tuple[int, float] | None = None  # the process running now (agent or check)
    cancelled: bool = False
    output_offset: int = 0  # where this round's agent output starts in the task's log
    before: _Snapshot | None = None
    last_tool: ProcessResult | None = None
    cpu_s: float = 0.0
    max_rss_bytes: int = 0
    usage: AgentUsage = NO_USAGE  # summed over its rounds
    verdict_reason: str = ""
    # This round's checks, in run order, with the position reached and the phase announced.
    checks: list[tuple[int, AcceptanceCheck]] = field(default_factory=list)
    position: int = 0
    phase: str = ""
    check_log: str = ""
    check_offset: int = 0
    failures: list[str] = field(default_factory=list)  # one description per failed round


class AgentExecutorActor(SupervisedActor):
    """Runs attempts of tasks routed to one ``aider`` or ``agent`` adapter (see the module
    docstring for the protocol). Any number of attempts may be in flight at once."""

    def __init__(self, name: str, directory: Directory, info: AdapterInfo, reactor: ProcessReactor) -> None:
        super().__init__(name, directory)
        self.info = info
        self.reactor = reactor
        # A misconfigured adapter still starts (so the runtime does), and fails each task
        # with the reason, instead of dying at start where nothing would say why.
        self.command: AgentCommand | None = None
        self.config_error = ""
        try:
            self.command = agent_command(info)
        except ValueError as error:
            self.config_error = str(error)
            log.error("agent_adapter_misconfigured", adapter=info.name, error=self.config_error)
        self.attempts: dict[tuple[str, str, int], _Attempt] = {}

    def handle(self, message: object) -> None:
        if isinstance(message, ExecuteTask):
            self._start(message)
        elif isinstance(message, ProcessExited):
            self._exited(message)
        elif isinstance(message, CancelAttempt):
            self._cancel(message)

    # -- starting and cancelling ------------------------------------------------------------
    def _start(self, request: ExecuteTask) -> None:
        key = (request.run_id, request.task.key, request.attempt)
        attempt = _Attempt(request=request, started=time.monotonic(), prompt=request.task.prompt or "")
        self.attempts[key] = attempt
        problem = self.config_error or ("" if request.task.prompt else "the task has no prompt for the agent")
        if problem:
            self._report_started(request, -1, 0.0)
            self._finish(key, attempt, TaskState.FAILED, ErrorClass.BAD_INPUT, problem)
            return
        self._run_agent(attempt)

    def _cancel(self, message: CancelAttempt) -> None:
        attempt = self.attempts.get((message.run_id, message.task_key, message.attempt))
        if attempt is None:
            return
        # With no process (it failed to start; its exit report is on the way) the flag alone
        # makes that report end the attempt CANCELLED.
        attempt.cancelled = True
        if attempt.process is not None:
            self.reactor.cancel(*attempt.process)

    def _report_started(self, request: ExecuteTask, pid: int, create_time: float) -> None:
        self.directory.tell(
            SCHEDULER,
            attempt_started(request, self.info.name, pid, create_time),
        )

    def _spawn(self, spec: ProcessSpec, request: ExecuteTask, phase: str, check_index: int = -1) -> tuple[int, float]:
        return spawn_for_attempt(self.reactor, self.actor_ref, spec, request, phase, check_index)

    # -- the agent ----------------------------------------------------------------------------
    def _run_agent(self, attempt: _Attempt) -> None:
        assert self.command is not None
        request, task = attempt.request, attempt.request.task
        attempt.output_offset = _append_header(request.log_path, f"== round {attempt.round} ==")
        cwd = task.cwd or "."
        attempt.before = worktree_snapshot(cwd)
        spec = ProcessSpec(
            argv=self.command.argv(attempt.prompt, task.files),
            cwd=cwd,
            env=task_environment(task) + self.command.environment(),
            log_path=request.log_path,
            timeout_s=task.timeout_s,
            memory_limit_mb=task.memory_limit_mb,
        )
        pid, create_time = self._spawn(spec, request, "tool")
        attempt.process = (pid, create_time) if pid > 0 else None
        if attempt.round == 0:
            self._report_started(request, pid, create_time)

    def _exited(self, message: ProcessExited) -> None:
        key = (message.run_id, message.task_key, message.attempt)
        attempt = self.attempts.get(key)
        if attempt is None:
            return
        attempt.process = None
        result = message.result
        if attempt.cancelled or result.outcome == "cancelled":
            self._finish(key, attempt, TaskState.CANCELLED, ErrorClass.CANCELLED, "cancelled; process tree killed")
        elif message.phase == "tool":
            self._agent_exited(key, attempt, result)
        else:
            self._check_exited(key, attempt, result)

    def _agent_exited(self, key: tuple[str, str, int], attempt: _Attempt, result: ProcessResult) -> None:
        attempt.last_tool = result
        attempt.cpu_s += result.cpu_s
        attempt.max_rss_bytes = max(attempt.max_rss_bytes, result.max_rss_bytes)
        where = f"round {attempt.round}: " if attempt.round else ""
        assert self.command is not None
        output = _read_from(attempt.request.log_path, attempt.output_offset, REPORT_LIMIT)
        attempt.usage = attempt.usage + usage_of(self.command.tool, output)
        if result.outcome is not ProcessOutcome.EXITED:
            # Stopped by us or never started: the shared rules decide (the exit code of an
            # agent that ran is judged below, by what it did).
            verdict = tool_verdict(result, cwd_exists=os.path.isdir(attempt.request.task.cwd or "."))
            assert verdict is not None
            self._finish(key, attempt, verdict.state, verdict.error_class, f"{where}the agent {verdict.message}")
            return
        changed = changed_between(attempt.before, worktree_snapshot(attempt.request.task.cwd or "."))
        verdict = classify_agent_attempt(
            result.exit_code,
            self.command.report(output),
            1 if changed is None else len(changed),
            output[-TAIL_LIMIT:],
        )
        log.info("agent_round", task=key[1], attempt=key[2], round=attempt.round, outcome=verdict.outcome,
                 changed=changed, reason=verdict.reason)
        if verdict.outcome != "success":
            self._finish(key, attempt, TaskState.FAILED, ErrorClass(verdict.error_class), f"{where}{verdict.reason}")
            return
        attempt.verdict_reason = verdict.reason
        attempt.checks = ordered_checks(attempt.request.task.acceptance)
        attempt.position = 0
        attempt.phase = ""
        self._next_check(key, attempt)

    # -- the checks -----------------------------------------------------------------------------
    def _next_check(self, key: tuple[str, str, int], attempt: _Attempt) -> None:
        if attempt.position >= len(attempt.checks):
            rounds = f" after {_fix_rounds(attempt.round)}" if attempt.round else ""
            self._finish(key, attempt, TaskState.COMPLETED, "", f"completed{rounds}: {attempt.verdict_reason}")
            return
        request = attempt.request
        index, check = attempt.checks[attempt.position]
        if check.phase != attempt.phase:
            attempt.phase = check.phase
            self.directory.tell(
                SCHEDULER,
                TaskValidating(request.run_id, request.task.key, request.attempt, utc_now_iso(), phase=Phase(check.phase)),
            )
        attempt.check_log = str(Path(request.log_path).with_suffix(f".check{index + 1}.log"))
        try:
            spec = check_spec(request.task, check, attempt.check_log)
        except ValueError as error:
            self._finish(key, attempt, TaskState.FAILED, ErrorClass.BAD_INPUT, str(error))
            return
        attempt.check_offset = _append_header(attempt.check_log, f"== round {attempt.round} ==")
        pid, create_time = self._spawn(spec, request, "check", index)
        attempt.process = (pid, create_time) if pid > 0 else None

    def _check_exited(self, key: tuple[str, str, int], attempt: _Attempt, result: ProcessResult) -> None:
        check = attempt.checks[attempt.position][1]
        if check_passed(check, result):
            attempt.position += 1
            self._next_check(key, attempt)
            return
        if result.outcome == "spawn_error":
            # Nothing the agent could fix: the check itself cannot run.
            self._finish(key, attempt, TaskState.FAILED, ErrorClass.BAD_INPUT,
                         f"acceptance check {check.label!r} could not start: {result.error}")
            return
        tail = _read_from(attempt.check_log, attempt.check_offset, TAIL_LIMIT)
        description = describe_check_failure(check, result, tail)
        attempt.failures.append(f"== round {attempt.round} ==\n{description}")
        task = attempt.request.task
        if attempt.round < task.max_fix_rounds:
            attempt.round += 1
            request = attempt.request
            self.directory.tell(
                SCHEDULER,
                TaskFixing(request.run_id, task.key, request.attempt, attempt.round, check.label, utc_now_iso()),
            )
            attempt.prompt = (
                f"{task.prompt}\n\nThe acceptance check `{check.label}` failed:\n{description}\n"
                "Fix the code so that it passes."
            )
            self._run_agent(attempt)
            return
        share = GATE_OUTPUT_LIMIT // len(attempt.failures)
        self._finish(
            key,
            attempt,
            TaskState.FAILED,
            ErrorClass.GATE,
            f"gate {check.label!r} failed after {_fix_rounds(attempt.round)}: {failure_reason(check, result)}"
            + (f": {said}" if (said := summary(tail, check.kind)) else ""),
            gate_output="\n\n".join(_clip_middle(f, share) for f in attempt.failures),
        )

    # -- the end ----------------------------------------------------------------------------------
    def _finish(
        self,
        key: tuple[str, str, int],
        attempt: _Attempt,
        state: TaskState,
        error_class: ErrorClass | str | None,
        message: str,
        gate_output: str = "",
    ) -> None:
        del self.attempts[key]
        tool = attempt.last_tool
        verdict = Verdict(state, ErrorClass(error_class) if error_class else None, message)
        self.directory.tell(
            SCHEDULER,
            attempt_finished(key, verdict, attempt.started, tool=tool,
                             max_rss_bytes=attempt.max_rss_bytes if tool else None,
                             cpu_s=round(attempt.cpu_s, 6) if tool else None, gate_output=gate_output,
                             usage=attempt.usage),
        )
