"""The web dashboard: a Starlette app over a :class:`views.backends.Backend`.

Pages (read-only, open to whoever reaches the address): ``/`` the runs; ``/runs/{id}`` one run
live (task graph, task table, log tail, buttons), its states pushed by server-sent events from
``/runs/{id}/events``; ``/runs/{id}/report`` the full report; ``/runs/{id}/log?task=KEY`` the end
of a task's log; ``/api/runs/{id}`` the live snapshot as JSON.

``POST /api/command`` ``{"command", "args"}`` changes a run (approve, reject, retry, cancel,
pause, resume). It needs the server's token in the ``X-Orchestrate-Token`` header (401
without it) and an ``Origin``/``Referer`` of the dashboard itself (403 otherwise); refused,
nothing reaches the runtime. Replies: 200 ``{"ok": true, "result"}``; 400 a bad request; 409 the
runtime refused (or there is none); 503 it did not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from control.protocol import ControlError
from domain.shown import task_shown_state
from persistence.reader import StateReader
from views.access import (
    TOKEN_HEADER,
    Listen,
    allowed_hosts,
    host_name,
    same_origin,
    token_matches,
)
from views.backends import WEB_COMMANDS, Backend, ChangeFeed, NoRuntime
from views.render import render
from views.report import RunNotFound, report_html, tail
from views.report_model import ordered_counts, task_graph

log = structlog.get_logger("orchestrate.web")

MAX_BODY_BYTES = 64 << 10
KEEPALIVE_S = 15.0
# A burst of task events becomes one push: the page redraws at most this often.
COALESCE_S = 0.25
LOG_TAIL_BYTES = 16 << 10
LOG_TAIL_LINES = 80
_STATUS_OF_CODE = {"unavailable": 503, "refused": 409, "not_found": 404}


class Streams:
    """The open event streams, so a stopping server can send each its last state first."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._open = 0
        self.closing = False

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        with self._lock:
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                self._lock.notify_all()

    def close(self, feed: ChangeFeed, timeout: float) -> bool:
        """Make every stream send its latest state and end; True if all ended within ``timeout``."""
        with self._lock:
            self.closing = True
        feed.bump()
        with self._lock:
            return self._lock.wait_for(lambda: self._open == 0, timeout)


def create_app(backend: Backend, token: str, listen: Listen, streams: Streams | None = None) -> Starlette:
    """The dashboard of ``backend``; mutating requests need ``token``; ``streams`` tracks its
    event streams (for a server that stops them)."""
    streams = streams or Streams()
    reader = StateReader(backend.engine)

    async def runs_page(request: Request) -> Response:
        runs = await run_in_threadpool(backend.runs)
        for run in runs:
            # As shown (domain.shown): allowed failures and reused results apart.
            run["counts"] = ordered_counts(run.get("shown_counts") or run.get("task_counts") or {})
        return HTMLResponse(render("dashboard_runs.html.j2", runs=runs, live=backend.live))

    async def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        model = await run_in_threadpool(_run_model, reader, backend, run_id)
        if model is None:
            return HTMLResponse(render("dashboard_missing.html.j2", run_id=run_id), status_code=404)
        return HTMLResponse(render("dashboard_run.html.j2", live=backend.live, commands=sorted(WEB_COMMANDS), **model))

    async def run_json(request: Request) -> Response:
        snapshot = await run_in_threadpool(backend.snapshot, request.path_params["run_id"])
        if snapshot is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse(snapshot)

    async def events(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def stream() -> AsyncIterator[str]:
            sent = ""
            with streams.open():
                while True:
                    seen = backend.feed.version
                    snapshot = await run_in_threadpool(backend.snapshot, run_id)
                    text = json.dumps(snapshot, separators=(",", ":"))
                    if text != sent:
                        sent = text
                        yield f"data: {text}\n\n"
                    if streams.closing:
                        return  # the last state was sent: the server is stopping
                    # Changes during this pause are sent together, at most a few pushes a second.
                    await asyncio.sleep(COALESCE_S)
                    if not await backend.feed.changed_since(seen, KEEPALIVE_S):
                        yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def log_tail(request: Request) -> Response:
        run_id, task = request.path_params["run_id"], request.query_params.get("task", "")
        attempts = await run_in_threadpool(reader.get_attempts, run_id, task)
        if not attempts:
            return PlainTextResponse(f"{task}: no attempt has started yet", status_code=404)
        last = attempts[-1]
        path = last.get("log_path") or ""
        text = await run_in_threadpool(tail, Path(path), LOG_TAIL_BYTES, LOG_TAIL_LINES) if path else ""
        header = f"== {task} attempt {last['attempt']} ({last['status']}) — {path or 'no log'}\n"
        return PlainTextResponse(header + (text or "(empty)"), headers={"Cache-Control": "no-store"})

    async def report(request: Request) -> Response:
        try:
            html = await run_in_threadpool(report_html, backend.engine, request.path_params["run_id"])
        except RunNotFound:
            return HTMLResponse(render("dashboard_missing.html.j2", run_id=request.path_params["run_id"]), 404)
        return HTMLResponse(html)

    async def command(request: Request) -> Response:
        if not token_matches(request.headers.get(TOKEN_HEADER), token):
            return _refusal(401, "unauthorized", "this needs the dashboard's token (printed when it started; "
                                                 "also in the state directory's ui.token)")
        if not same_origin(request.headers, request.url.scheme):
            return _refusal(403, "forbidden", "cross-origin request refused: send it from the dashboard's own pages")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _refusal(413, "too_large", f"a command is at most {MAX_BODY_BYTES} bytes")
        try:
            document = json.loads(body)
            name, args = document["command"], document.get("args", {})
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _refusal(400, "invalid_request", 'expected JSON {"command": NAME, "args": {...}}')
        try:
            result = await run_in_threadpool(backend.command, name, args)
        except NoRuntime as refusal:
            return _refusal(409, refusal.code, refusal.message)
        except ControlError as refusal:
            return _refusal(_STATUS_OF_CODE.get(refusal.code, 400), refusal.code, refusal.message)
        return JSONResponse({"ok": True, "result": json.loads(json.dumps(result, default=str))})

    routes = [
        Route("/", runs_page),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/events", events),
        Route("/runs/{run_id}/log", log_tail),
        Route("/runs/{run_id}/report", report),
        Route("/api/runs/{run_id}", run_json),
        Route("/api/command", command, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: _internal_error})
    app.add_middleware(HostCheck, allowed=allowed_hosts(listen))
    return app


class HostCheck:
    """Refuses (421) a request naming a host this server does not answer to: a page of another
    site that rebinds its DNS name to this address names its own host."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                await PlainTextResponse(f"this dashboard does not answer to host {host!r}", 421)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _internal_error(request: Request, error: Exception) -> Response:
    # A bug of ours: the traceback goes to the runtime's log, never to the browser.
    log.error("dashboard_request_failed", path=request.url.path, exc_info=error)
    return PlainTextResponse("internal error; see the runtime log", status_code=500)


def _refusal(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": {"code": code, "message": message}}, status_code=status)


def _run_model(reader: StateReader, backend: Backend, run_id: str) -> dict[str, Any] | None:
    """What the run page shows when it loads (the ledger's plan and tasks once, the live
    snapshot for their states)."""
    run = reader.get_run(run_id, metadata=False)
    if run is None:
        return None
    tasks = reader.get_tasks(run_id)
    snapshot = backend.snapshot(run_id) or {}
    live_states = snapshot.get("tasks") or {}
    shown = snapshot.get("shown_states") or {}
    for task in tasks:
        task["state"] = live_states.get(task["task_key"], task["state"])
        # As shown (domain.shown): the snapshot's word for it, else the ledger's.
        task["shown"] = shown.get(task["task_key"]) or (task["state"] if snapshot else task_shown_state(task))
    task_ids = {task["task_key"]: f"t{index}" for index, task in enumerate(tasks)}
    graph = task_graph(tasks, reader.get_workstreams(run_id), task_ids)
    return {"run": run, "tasks": tasks, "dag": graph, "snapshot": snapshot}
