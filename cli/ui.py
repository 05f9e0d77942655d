"""The web dashboard from the command line: ``--ui [HOST:]PORT`` of a runtime, and
``orchestrate ui [HOST:]PORT``.

Imported only when a dashboard is asked for, so a runtime without one never loads the web stack.
The address is bound before the runtime starts (a port in use: one line, nothing started); the
URL with the token is printed once.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from cli.errors import EXIT_RUNTIME, EXIT_USAGE, CliError
from cli.reading import open_ledger
from views.access import BadListenAddress, Listen, parse_listen
from views.server import DashboardServer, DashboardUnavailable, bind


def bind_address(text: str) -> tuple[Listen, socket.socket]:
    """``[HOST:]PORT`` parsed and bound; a bad address exits 2, an unusable one 3."""
    try:
        listen = parse_listen(text)
    except BadListenAddress as error:
        raise CliError(f"--ui/ui: {error}", EXIT_USAGE) from None
    try:
        return listen, bind(listen)
    except DashboardUnavailable as error:
        raise CliError(str(error), EXIT_RUNTIME) from None


def start_for_runtime(runtime, bound: tuple[Listen, socket.socket], state_dir: Path) -> DashboardServer:
    """Serve ``runtime``'s dashboard from a thread; it stops first when the runtime stops."""
    from views.backends import RuntimeBackend

    listen, sock = bound
    server = _server(RuntimeBackend(runtime), sock, listen, state_dir)
    runtime.before_stop.append(server.stop)
    server.start()
    _announce(server)
    return server


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the ledger's runs (read-only), or steer the live runtime of this state directory
    when one answers on its socket, until stopped (Ctrl-C, SIGTERM)."""
    from control import SOCKET_FILE
    from control.client import ControlClient, RuntimeNotListening
    from control.protocol import ControlError
    from views.backends import LedgerBackend, SocketBackend

    bound = bind_address(args.listen)
    engine, state_dir = open_ledger(args)
    socket_path = Path(args.socket) if args.socket else state_dir / SOCKET_FILE
    try:
        try:
            with ControlClient(socket_path, timeout_s=5) as client:
                client.request("ping")
            backend = SocketBackend(engine, socket_path)
            how = f"attached to the runtime at {socket_path}"
        except (RuntimeNotListening, ControlError, OSError):
            backend = LedgerBackend(engine)
            how = "no runtime is running: showing the ledger read-only"
        server = _server(backend, bound[1], bound[0], state_dir)
        server.start()
        print(f"orchestrate: {how}", flush=True)
        _announce(server)
        try:
            while server.alive:
                server.wait(1.0)
        finally:
            server.stop()
        raise CliError("the dashboard stopped on its own (see the state directory's logs/runtime.jsonl)", EXIT_RUNTIME)
    finally:
        engine.dispose()


def _server(backend, sock: socket.socket, listen: Listen, state_dir: Path) -> DashboardServer:
    try:
        return DashboardServer(backend, sock, listen, state_dir)
    except DashboardUnavailable as error:
        sock.close()
        backend.close()
        raise CliError(str(error), EXIT_RUNTIME) from None


def _announce(server: DashboardServer) -> None:
    print(f"orchestrate: dashboard at {server.url}\n"
          f"  (the token is for this server only; it is also in {server.token_path}, mode 0600)", flush=True)
