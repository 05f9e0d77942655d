"""Which lines of a failed tool's output say why it failed.

A log's last line is often noise (ruff's ``[*] 1 fixable with --fix.``, pytest's ``===== 1
failed in 0.1s =====``). :func:`signal_lines` picks the lines that carry the signal, in this
order of preference:

1. pytest: the short-summary lines ``FAILED path::test - reason`` and ``ERROR path - reason``,
   and ``ERROR: not found: …`` / ``ERROR: file or directory not found: …`` (a bad test id);
2. ruff (and any linter in its format): ``path:line:col: CODE message`` diagnostics — ruff's
   default ``full`` format (``CODE message`` then `` --> path:line:col``) is folded into that;
3. a Python traceback: its last frame (``File "…", line N, in f``) and the exception line;
4. otherwise the last non-empty lines.

Pure: text in, lines out. ``kind`` (``pytest``, ``ruff``, ``import``, ``command``, a tool name
…) only breaks ties: every detector is tried, so a shell task that runs pytest is read as pytest.
"""

from __future__ import annotations

import re

DEFAULT_LIMIT = 5
_LINE_WIDTH = 240

_PYTEST_SUMMARY = re.compile(r"^(FAILED|ERROR) \S")
_PYTEST_USAGE = re.compile(r"^ERROR: (?:file or directory )?not found: ")
_LINT = re.compile(r"^[^\s:][^:]*:\d+:\d+: [A-Z]+[0-9]+ ")
_LINT_HEAD = re.compile(r"^([A-Z]+[0-9]+) (.+)$")
_LINT_AT = re.compile(r"^\s*--> (\S+:\d+:\d+)$")
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure)\b(?::|$)")
_TRACEBACK_START = "Traceback (most recent call last):"


def signal_lines(text: str, kind: str = "", limit: int = DEFAULT_LIMIT, fallback: int | None = None) -> list[str]:
    """At most ``limit`` lines of ``text`` (a log's tail) that say why the tool failed, each
    stripped and cut to a readable width; empty only when ``text`` has no visible line. When no
    known format is found, the last ``fallback`` (default ``limit``) non-empty lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    detectors = [_pytest, _lint, _traceback]
    if kind == "ruff":
        detectors = [_lint, _pytest, _traceback]
    for detect in detectors:
        found = detect(lines)
        if found:
            return _shown(found, limit)
    last = limit if fallback is None else fallback
    return _shown([line for line in lines if line.strip()][-last:], last)


def summary(text: str, kind: str = "", limit: int = 3) -> str:
    """:func:`signal_lines` as one line (``; ``-joined), for a failure message: up to ``limit``
    signal lines, or the last line alone when the output has no known format (what a tool
    says last is usually its reason, and a message stays one short sentence)."""
    return "; ".join(signal_lines(text, kind, limit, fallback=1))


def _pytest(lines: list[str]) -> list[str]:
    usage = [line for line in lines if _PYTEST_USAGE.match(line)]
    return usage + [line for line in lines if _PYTEST_SUMMARY.match(line) and not _PYTEST_USAGE.match(line)]


def _lint(lines: list[str]) -> list[str]:
    found = []
    for index, line in enumerate(lines):
        if _LINT.match(line):
            found.append(line)
        elif (head := _LINT_HEAD.match(line)) and index + 1 < len(lines) and (at := _LINT_AT.match(lines[index + 1])):
            found.append(f"{at.group(1)}: {head.group(1)} {head.group(2)}")
    return found


def _traceback(lines: list[str]) -> list[str]:
    starts = [index for index, line in enumerate(lines) if line.startswith(_TRACEBACK_START)]
    if not starts:
        return []
    body = lines[starts[-1] + 1:]
    frames = [index for index, line in enumerate(body) if _FRAME.match(line)]
    exceptions = [index for index, line in enumerate(body) if _EXCEPTION.match(line)]
    if not exceptions:
        return []
    exception = exceptions[-1]
    before = [index for index in frames if index < exception]
    return ([body[before[-1]].strip()] if before else []) + [body[exception]]


def _shown(lines: list[str], limit: int) -> list[str]:
    chosen = lines[:limit] if len(lines) <= limit else lines[: limit - 1] + [f"… and {len(lines) - limit + 1} more"]
    return [line.strip()[:_LINE_WIDTH] for line in chosen]
