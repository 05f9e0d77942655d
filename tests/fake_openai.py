"""A tiny OpenAI-compatible HTTP server for driving real agent CLIs offline in tests.

``FakeOpenAI`` listens on 127.0.0.1 on an ephemeral port, in a background thread, for the
duration of a ``with`` block:

- ``POST /v1/chat/completions`` answers from a queue of scripted replies (a ``str`` is the
  assistant's message; a :class:`Reply` can also be an HTTP error). A request that asks for
  ``"stream": true`` gets the same reply as server-sent events. When the queue is empty the
  server answers 500, so a test that under-scripts fails visibly instead of hanging.
- Every answer reports ``usage`` (``prompt_tokens``, ``completion_tokens``: 10 each unless the
  :class:`Reply` says otherwise), which aider turns into its ``Tokens: … Cost: …`` line when
  the model's metadata names per-token prices.
- ``GET /v1/models`` lists one model.
- Every request is recorded (``requests``; ``chat_requests`` holds the decoded bodies of the
  completions), so a test can assert what the tool sent, e.g. that the prompt of the next
  round contains the failure output of the last.
- It doubles as a tripwire for network access: point ``HTTP(S)_PROXY`` at ``proxy_url`` (with
  ``NO_PROXY`` covering 127.0.0.1) and any attempt by the tool to reach another host arrives
  here as a proxy request (``CONNECT host:443`` or an absolute URL). It is recorded in
  ``foreign_requests`` and refused with 403; nothing leaves the machine.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

DEFAULT_MODEL = "fake-model"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a chat message (``status`` 200) or an HTTP error."""

    content: str = ""
    status: int = 200
    error_message: str = "fake server error"
    finish_reason: str = "stop"
    # For errors: send ``x-should-retry: true|false``, which the openai client obeys instead of
    # its own retry policy (2 retries with backoff). None sends no such header.
    should_retry: bool | None = None
    # The token counts reported in the answer's ``usage`` (and its last stream chunk).
    prompt_tokens: int = 10
    completion_tokens: int = 10


def error_reply(
    status: int = 500, message: str = "fake server: internal error", should_retry: bool | None = None
) -> Reply:
    return Reply(status=status, error_message=message, should_retry=should_retry)


def whole_edit(path: str, content: str, preamble: str = "Here is the updated file:") -> str:
    """An aider "whole" edit-format reply: the path on its own line, then the full new file
    in a fenced block. Aider writes ``content`` to ``path`` when it parses this."""
    if not content.endswith("\n"):
        content += "\n"
    return f"{preamble}\n\n{path}\n```\n{content}```\n"


def prompt_text(body: dict) -> str:
    """All the text of a chat-completions request's messages, joined (for assertions)."""
    parts: list[str] = []
    for message in body.get("messages", []) or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # decoded JSON, or the raw text when it is not JSON
    at: float = field(default_factory=time.time)


class FakeOpenAI:
    """``with FakeOpenAI(["reply 1", error_reply(500)]) as server: ... server.base_url``"""

    def __init__(self, replies: Iterable[str | Reply] = (), model: str = DEFAULT_MODEL) -> None:
        self.model = model
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.foreign_requests: list[RecordedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.script(*replies)

    # --- scripting and inspection -------------------------------------------------------
    def script(self, *replies: str | Reply) -> None:
        with self._lock:
            self._replies.extend(r if isinstance(r, Reply) else Reply(content=r) for r in replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    @property
    def chat_requests(self) -> list[dict]:
        with self._lock:
            return [r.body for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "FakeOpenAI":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    # --- used by the handler -------------------------------------------------------------
    def _record(self, request: RecordedRequest, foreign: bool = False) -> None:
        with self._lock:
            (self.foreign_requests if foreign else self.requests).append(request)

    def _next_reply(self) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return error_reply(500, "fake server: no scripted reply left")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI  # set on the bound subclass
    server_version = "FakeOpenAI/1.0"
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at shutdown

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        text = raw.decode("utf-8", "replace")
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return text

    def _record(self, body: Any = None, foreign: bool = False) -> None:
        self.fake._record(RecordedRequest(self.command, self.path, dict(self.headers.items()), body), foreign)

    def _send_json(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._send_json(404, {"error": {"message": f"fake server: no route {self.path}", "type": "not_found"}})

    def _is_foreign(self) -> bool:
        # A proxied request names an absolute URL; a direct one a path.
        return self.command == "CONNECT" or self.path.startswith(("http://", "https://"))

    def _refuse_foreign(self) -> None:
        self._send_json(403, {"error": {"message": "fake server: network access refused in tests"}})

    def do_CONNECT(self) -> None:  # noqa: N802 - http.server naming
        self._record(foreign=True)
        self._refuse_foreign()

    def do_GET(self) -> None:  # noqa: N802
        if self._is_foreign():
            self._record(foreign=True)
            return self._refuse_foreign()
        self._record()
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = {"id": self.fake.model, "object": "model", "created": 0, "owned_by": "fake"}
            return self._send_json(200, {"object": "list", "data": [model]})
        self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        body = self._read_body()
        if self._is_foreign():
            self._record(body, foreign=True)
            return self._refuse_foreign()
        self._record(body)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return self._not_found()
        reply = self.fake._next_reply()
        if reply.status != 200:
            return self._send_json(
                reply.status,
                {"error": {"message": reply.error_message, "type": "server_error", "param": None, "code": None}},
                headers={} if reply.should_retry is None else {"x-should-retry": str(reply.should_retry).lower()},
            )
        model = body.get("model", self.fake.model) if isinstance(body, dict) else self.fake.model
        if isinstance(body, dict) and body.get("stream"):
            return self._send_stream(model, reply)
        usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                 "total_tokens": reply.prompt_tokens + reply.completion_tokens}
        self._send_json(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": usage,
            },
        )

    def _send_stream(self, model: str, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        delta = {"role": "assistant", "content": reply.content}
        chunks = [
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]},
        ]
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
