"""A throwaway PostgreSQL server for the tests: Debian's server binaries, a cluster in a
temporary directory, trust authentication on a free loopback port, run as the ``postgres``
user (``initdb`` and ``postgres`` refuse to run as root, and the tests run as root).

:func:`find_bin_dir` says where the binaries are (``None``: tests that need a server skip);
:class:`PostgresServer` starts one, hands out fresh databases, and stops it without leaving a
postmaster behind.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

# The user the server runs as when the tests run as root (Debian's postgresql package makes it).
SERVER_USER = "postgres"
START_TIMEOUT_S = 60.0


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(Path(path).parent.parent.name or 0))
    for initdb in reversed(candidates):
        directory = Path(initdb).parent
        if (directory / "pg_ctl").exists():
            return directory
    return None


def why_unavailable() -> str | None:
    """Why no server can be started here (None when one can)."""
    if find_bin_dir() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); `.ci/run` installs them"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster owned by the test session."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="orchestrate-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = SERVER_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._as_server_user([str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust",
                              "-U", self.user, "--no-sync", "-E", "UTF8", "--locale=C"], check=True)
        self._launch()

    def _launch(self) -> None:
        # The server in the foreground as our child (its own process group), so the session
        # owns it by pid. fsync off: a throwaway cluster need not survive the machine, only a
        # crash of the server (so commits stay synchronous: `crash` must not lose them).
        self._process = subprocess.Popen(
            self._wrap([str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                        "-c", "fsync=off", "-c", "full_page_writes=off",
                        "-c", "max_connections=300"]),
            stdout=(self.root / "server.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}: {self.log_tail()}")
            try:
                psycopg.connect(self.url_for("postgres", driver=False), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections in {START_TIMEOUT_S}s: "
                                       f"{self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT: nothing of a throwaway cluster is worth a checkpoint),
        then SIGKILL of the process group if it lingers; the directory goes too."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(3)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT): every connection is cut at once, nothing is cleaned up
        and the next start runs crash recovery, as after a crash. (SIGKILL of the postmaster
        would leave its backends as zombies nobody reaps on a machine whose init does not.)"""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(3)
            process.wait(timeout=60)
        self._process = None

    def restart(self) -> None:
        """Start again on the same data and port (after :meth:`crash`)."""
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        self._launch()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- databases -----------------------------------------------------------------------------
    def url_for(self, database: str, driver: bool = True) -> str:
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url_for("postgres", driver=False), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- helpers -------------------------------------------------------------------------------
    def _wrap(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--clear-groups", *argv]

    def _as_server_user(self, argv: list[str], check: bool) -> None:
        completed = subprocess.run(self._wrap(argv), capture_output=True, text=True, cwd=self.root, check=False)
        if check and completed.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({completed.returncode}): {completed.stderr.strip()}")
