"""Serving the dashboard from a thread: uvicorn on a socket bound up front.

:func:`bind` takes the address before anything else starts, so a port in use is refused with one
line and nothing half-started. :class:`DashboardServer` runs uvicorn in one thread of the calling
process (no subprocess: it shares the runtime's status read model) and :meth:`stop` ends it
within about a second, open event streams included, leaving no thread behind.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from views.access import Listen, new_token, write_token
from views.backends import Backend

STOP_TIMEOUT_S = 5.0
LAST_STATE_TIMEOUT_S = 1.0


class DashboardUnavailable(RuntimeError):
    """The dashboard cannot be served (its packages are missing, or the address is unusable)."""


def bind(listen: Listen) -> socket.socket:
    """A listening TCP socket on ``listen`` (port 0: any free port); raises
    :class:`DashboardUnavailable` naming the address and the reason."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(128)
    except (OSError, OverflowError) as error:
        sock.close()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise DashboardUnavailable(f"cannot serve the dashboard on {listen.url_host}:{listen.port}: {reason}") from None
    sock.set_inheritable(False)
    return sock


class DashboardServer:
    """The dashboard of ``backend`` on the bound ``sock``; a fresh token is written to
    ``<state_dir>/ui.token`` (0600). :attr:`url` carries the token in its fragment."""

    def __init__(self, backend: Backend, sock: socket.socket, listen: Listen, state_dir: Path) -> None:
        try:
            import uvicorn

            from views.dashboard import Streams, create_app
        except ImportError as error:
            raise DashboardUnavailable(
                f"the dashboard needs the 'ui' extra ({error.name} is not installed): pip install 'orchestrate[ui]'"
            ) from None
        self.backend = backend
        self.token = new_token()
        self.token_path = write_token(state_dir, self.token)
        self._sock = sock
        port = sock.getsockname()[1]
        self.listen = Listen(listen.host, port)
        self._streams = Streams()
        config = uvicorn.Config(
            create_app(backend, self.token, self.listen, self._streams),
            log_config=None,  # the runtime's logging stays as it is
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="orchestrate-web", daemon=True)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.listen.host in ("0.0.0.0", "") else self.listen.url_host
        return f"http://{host}:{self.listen.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/#token={self.token}"

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        # Not the main thread, so uvicorn leaves the process's signal handlers alone.
        self._server.run(sockets=[self._sock])

    def stop(self) -> None:
        """Stop serving: each open page is sent its last state (waiting at most
        :data:`LAST_STATE_TIMEOUT_S`), then every connection is cut. Idempotent."""
        if self._thread.is_alive():
            self._streams.close(self.backend.feed, LAST_STATE_TIMEOUT_S)
        self._server.should_exit = True
        self._server.force_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)
        self._sock.close()
        self.backend.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float) -> None:
        """Return when the server thread ended or ``timeout`` passed."""
        self._thread.join(timeout)
