"""Reading ``router_config.json``: adapters, their limits and breakers, and routing rules.

Validated against ``schema/router_config.v1.json`` and then for consistency (unique adapter
names, known fallbacks and rule adapters). Problems are reported together as a
:class:`PlanError`, each with the file and JSON path, like plan errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from domain.breaker import BreakerPolicy
from domain.routing import AdapterInfo, RouterConfig, Rule, Strategy, default_config
from planning.errors import PlanError, PlanIssue
from planning.schemas import schema_issues

ROUTER_SCHEMA = "router_config.v1.json"
DEFAULT_FILENAME = "router_config.json"


def find_router_config(explicit: str | None, cwd: Path) -> Path | None:
    """The config to use: the one named, else ``./router_config.json`` if present, else none."""
    if explicit:
        return Path(explicit)
    candidate = cwd / DEFAULT_FILENAME
    return candidate if candidate.is_file() else None


def load_router_config(path: str | os.PathLike[str] | None) -> RouterConfig:
    """The configuration in ``path``, or the built-in default when ``path`` is None."""
    if path is None:
        return default_config()
    label = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError([PlanIssue(label, "$", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError([PlanIssue(label, "$", f"cannot be read: {exc}")]) from None
    except json.JSONDecodeError as exc:
        raise PlanError([PlanIssue(label, "$", f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]) from None
    issues = [PlanIssue(label, where, message) for where, message in schema_issues(ROUTER_SCHEMA, data)]
    if issues:
        raise PlanError(issues)
    issues = _consistency_issues(label, data)
    if issues:
        raise PlanError(issues)
    return RouterConfig(
        adapters=tuple(_adapter(a) for a in data["adapters"]),
        rules=tuple(_rule(r) for r in data.get("rules", ())),
    )


def _consistency_issues(label: str, data: dict[str, Any]) -> list[PlanIssue]:
    issues: list[PlanIssue] = []
    seen: dict[str, int] = {}
    for index, adapter in enumerate(data["adapters"]):
        name = adapter["name"]
        if name in seen:
            issues.append(PlanIssue(label, f"$.adapters[{index}].name",
                                    f"duplicate adapter name {name!r} (first at $.adapters[{seen[name]}])"))
        seen.setdefault(name, index)
    for index, adapter in enumerate(data["adapters"]):
        fallback = adapter.get("fallback")
        if fallback is not None and fallback not in seen:
            issues.append(PlanIssue(label, f"$.adapters[{index}].fallback",
                                    f"unknown adapter {fallback!r} (known: {', '.join(seen)})"))
        if fallback == adapter["name"]:
            issues.append(PlanIssue(label, f"$.adapters[{index}].fallback", "an adapter cannot fall back to itself"))
    for index, rule in enumerate(data.get("rules", ())):
        for position, name in enumerate(rule["adapters"]):
            if name not in seen:
                issues.append(PlanIssue(label, f"$.rules[{index}].adapters[{position}]",
                                        f"unknown adapter {name!r} (known: {', '.join(seen)})"))
    return issues


def _adapter(data: dict[str, Any]) -> AdapterInfo:
    breaker = data.get("breaker", {})
    defaults = BreakerPolicy()
    return AdapterInfo(
        name=data["name"],
        type=data["type"],
        concurrency=data.get("concurrency"),
        tools=tuple(data["tools"]) if "tools" in data else None,
        fallback=data.get("fallback"),
        breaker=BreakerPolicy(
            max_failures=breaker.get("max_failures", defaults.max_failures),
            reset_timeout_s=float(breaker.get("reset_timeout_s", defaults.reset_timeout_s)),
            backoff_factor=float(breaker.get("backoff_factor", defaults.backoff_factor)),
            max_reset_timeout_s=float(breaker.get("max_reset_timeout_s", defaults.max_reset_timeout_s)),
        ),
        timeout_s=data.get("timeout_s"),
        class_ref=data.get("class"),
        settings=tuple(sorted(data.get("settings", {}).items())),
    )


def _rule(data: dict[str, Any]) -> Rule:
    match = data.get("match", {})
    return Rule(
        adapters=tuple(data["adapters"]),
        strategy=Strategy(data.get("strategy", "fixed")),
        name=data.get("name", ""),
        tool=match.get("tool"),
        kind=match.get("kind"),
        tags=tuple(match.get("tags", ())),
        files=tuple(match.get("files", ())),
    )
