"""What an agent's round used: tokens in and out, and its cost, as the tool itself reports them.

Pure: text in, numbers out. Each reader takes the tool's own output format (checked against the
tools' source and docs) and never raises; a round that reports nothing gives ``None`` fields:

- **aider** prints, after every model reply, ``Tokens: 2.3k sent, 150 received. Cost: $0.0012
  message, $0.0034 session.`` (``aider/coders/base_coder.py`` 0.86: counts under 1000 exact,
  under 10k with one decimal ``k``, above rounded ``k``; optional ``, N cache write`` /
  ``, N cache hit`` parts; the ``Cost:`` part only when the model has a price, on the next line
  when both cache parts are there). A round's use is the sum of its reports.
- **Claude Code** (``claude -p --output-format json``): the result object's ``usage``
  (``input_tokens``, ``cache_creation_input_tokens``, ``cache_read_input_tokens``,
  ``output_tokens``) and ``total_cost_usd``.
- **Codex CLI** (``codex exec --json``): each ``turn.completed`` event's ``usage``
  (``input_tokens``, ``cached_input_tokens``, ``output_tokens``); it reports no cost.
- **Gemini CLI** (``gemini -p --output-format json``): ``stats.models.<model>.tokens``
  (``prompt``, ``candidates``, ``cached``, ``thoughts``, ``tool``, ``total``); no cost.

Tokens in count every prompt token the model read (cached ones included: they were sent).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """Tokens sent to (``tokens_in``) and received from (``tokens_out``) the model, and the cost
    in US dollars; None where the tool did not say."""

    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None

    @property
    def reported(self) -> bool:
        return self != NO_USAGE

    def __add__(self, other: AgentUsage) -> AgentUsage:
        def plus(a: float | None, b: float | None) -> Any:
            return a if b is None else b if a is None else a + b

        return AgentUsage(plus(self.tokens_in, other.tokens_in), plus(self.tokens_out, other.tokens_out),
                          plus(self.cost_usd, other.cost_usd))


NO_USAGE = AgentUsage()

_COUNT = r"(\d+(?:\.\d+)?k?)"
_AIDER_TOKENS = re.compile(
    rf"^Tokens: {_COUNT} sent(?:, {_COUNT} cache write)?(?:, {_COUNT} cache hit)?, {_COUNT} received\."
    r"(?:[ \n]Cost: \$(\d+(?:\.\d+)?) message, \$(\d+(?:\.\d+)?) session\.)?",
    re.MULTILINE,
)


def _aider_count(text: str | None) -> int:
    if not text:
        return 0
    if text.endswith("k"):
        return round(float(text[:-1]) * 1000)
    return int(float(text))


def aider_usage(output: str) -> AgentUsage:
    """The sum of every ``Tokens: …`` report of an aider round. ``sent`` already includes cache
    writes (aider adds them in); its cost is the ``message`` cost. Counts above 1000 are as aider
    rounded them (``2.3k`` → 2300)."""
    total = NO_USAGE
    for match in _AIDER_TOKENS.finditer(output):
        sent, _written, _hit, received, message_cost, _session = match.groups()
        cost = float(message_cost) if message_cost is not None else None
        total = total + AgentUsage(_aider_count(sent), _aider_count(received), cost)
    return total


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _sum(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def claude_usage(document: Any) -> AgentUsage:
    """From Claude Code's result object (or the list of messages whose last ``result`` counts)."""
    if isinstance(document, list):
        results = [m for m in document if isinstance(m, dict) and m.get("type") == "result"]
        document = results[-1] if results else None
    if not isinstance(document, dict):
        return NO_USAGE
    usage = document.get("usage") if isinstance(document.get("usage"), dict) else {}
    cost = document.get("total_cost_usd")
    return AgentUsage(
        _sum(_number(usage.get("input_tokens")), _number(usage.get("cache_creation_input_tokens")),
             _number(usage.get("cache_read_input_tokens"))),
        _number(usage.get("output_tokens")),
        float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )


def codex_usage(events: list[dict[str, Any]]) -> AgentUsage:
    """The sum of the ``usage`` of every ``turn.completed`` event (``input_tokens`` already
    includes ``cached_input_tokens``)."""
    total = NO_USAGE
    for event in events:
        usage = event.get("usage") if event.get("type") == "turn.completed" else None
        if isinstance(usage, dict):
            total = total + AgentUsage(_number(usage.get("input_tokens")), _number(usage.get("output_tokens")))
    return total


def gemini_usage(document: Any) -> AgentUsage:
    """The sum over ``stats.models`` of each model's ``tokens``: ``prompt`` in, ``candidates``
    plus ``thoughts`` out."""
    stats = document.get("stats") if isinstance(document, dict) else None
    models = stats.get("models") if isinstance(stats, dict) else None
    if not isinstance(models, dict):
        return NO_USAGE
    total = NO_USAGE
    for model in models.values():
        tokens = model.get("tokens") if isinstance(model, dict) else None
        if isinstance(tokens, dict):
            total = total + AgentUsage(_number(tokens.get("prompt")),
                                       _sum(_number(tokens.get("candidates")), _number(tokens.get("thoughts"))))
    return total


def json_events(output: str) -> list[dict[str, Any]]:
    """The JSON objects that are whole lines of ``output`` (JSONL), others skipped."""
    events = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def last_json_document(output: str) -> Any:
    """The whole output as JSON, else its last line that is a JSON object or array; None."""
    text = output.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def usage_of(tool: str, output: str) -> AgentUsage:
    """What a round of ``tool`` (``aider``, ``claude``, ``codex``, ``gemini``; anything else is
    read as the JSON format it prints) used, from its output."""
    if tool == "aider":
        return aider_usage(output)
    if tool == "codex":
        return codex_usage(json_events(output))
    document = last_json_document(output)
    if tool == "gemini" or (isinstance(document, dict) and "stats" in document):
        return gemini_usage(document)
    if tool == "claude" or isinstance(document, (dict, list)):
        return claude_usage(document)
    return NO_USAGE
