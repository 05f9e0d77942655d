"""``orchestrate metrics [--run ID] [-o FILE]``: a recorded run's metrics, from the ledger.

The same families a live runtime serves at ``/metrics`` (see :mod:`monitoring.exposition`),
computed by :func:`domain.metrics.tally_from_records` from the run's rows, in Prometheus' text
format as a node_exporter textfile collector reads it (``-o`` writes the file atomically).
Every sample carries the run's id as the ``run_id`` label.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, CliError
from cli.reading import open_ledger
from domain.metrics import AGENT_USAGE, CIRCUIT_VALUES, tally_from_records
from monitoring.exposition import MetricsView, exposition_text, registry_of
from persistence.reader import StateReader

# Events of no run that still describe a run's time: circuits and restarts are the runtime's.
_RUNTIME_EVENTS = (*CIRCUIT_VALUES, "ACTOR_RESTARTED")
_RUN_EVENTS = (*_RUNTIME_EVENTS, "RUN_CREATED", "EXECUTION_REQUEST_VALIDATED", AGENT_USAGE)


def cmd_metrics(args: argparse.Namespace) -> int:
    engine, _ = open_ledger(args)
    try:
        text = run_metrics(StateReader(engine), args.run_id)
    finally:
        engine.dispose()
    if args.output:
        _write_atomically(Path(args.output), text)
    else:
        print(text, end="")
    return EXIT_OK


def run_metrics(reader: StateReader, run_id: str | None) -> str:
    """The exposition text of ``run_id`` (default: the latest run)."""
    if run_id is None:
        run_id = reader.latest_run_id()
        if run_id is None:
            raise CliError("no runs in the ledger yet; run one with `orchestrate run PLAN`", EXIT_USAGE)
    run = reader.get_run(run_id, metadata=False)
    if run is None:
        raise CliError(f"no run {run_id!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE)
    events = reader.get_events(run_id, types=_RUN_EVENTS)
    events += reader.get_ledger_events(run["created_at"], run["updated_at"], _RUNTIME_EVENTS)
    events.sort(key=lambda event: event["id"])
    runtime = reader.runtime_of(run["updated_at"])
    tally = tally_from_records(reader.get_tasks(run_id), reader.get_attempts(run_id), events,
                               runtime.get("db_write") if runtime else None)
    view = MetricsView(tally, labels={"run_id": run_id})
    return exposition_text(registry_of(lambda: view))


def _write_atomically(path: Path, text: str) -> None:
    """A collector reading the file never sees half of it: write beside it, then rename."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {error.strerror}", EXIT_RUNTIME) from None
