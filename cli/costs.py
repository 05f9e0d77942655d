"""What a run's agent attempts cost, for ``runs show``: per attempt and in total, from the
ledger's ``step_attempts`` rows (tokens and cost as each tool reported them)."""

from __future__ import annotations

from typing import Any

from persistence.reader import StateReader

_FIELDS = ("step_name", "attempt", "adapter", "status", "tokens_in", "tokens_out", "cost_usd")


def agent_costs(reader: StateReader, run_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(attempts, total)``: every attempt that reported tokens or a cost, and their sums
    (``cost_usd`` None when no attempt reported a cost)."""
    attempts = [{key: row.get(key) for key in _FIELDS} for row in reader.get_attempts(run_id)
                if row.get("tokens_in") is not None or row.get("cost_usd") is not None]
    costs = [a["cost_usd"] for a in attempts if a["cost_usd"] is not None]
    total = {
        "agent_attempts": len(attempts),
        "tokens_in": sum(a["tokens_in"] or 0 for a in attempts),
        "tokens_out": sum(a["tokens_out"] or 0 for a in attempts),
        "cost_usd": round(sum(costs), 8) if costs else None,
    }
    return attempts, total


def cost_line(total: dict[str, Any]) -> str:
    """One line for people: ``cost: $0.011 (2 agent attempts, 2,700 tokens in, 700 out)``."""
    cost = "unknown" if total["cost_usd"] is None else f"${total['cost_usd']:.2g}"
    count = total["agent_attempts"]
    return (f"cost: {cost} ({count} agent attempt{'s' if count != 1 else ''}, "
            f"{total['tokens_in']:,} tokens in, {total['tokens_out']:,} out)")
