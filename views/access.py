"""Who may change a run from the web dashboard: a per-server token and a same-origin check.

Pure functions, plus :func:`write_token`, the one place the token touches the disk. A
mutating request must carry the token (header :data:`TOKEN_HEADER`) **and** come from a page of
the dashboard itself (its ``Origin``, else its ``Referer``, names the host it was sent to), so
neither a stolen page nor a forged cross-site form can steer a run. Every request must name a
host the server answers to (a DNS-rebinding page names its own).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

TOKEN_FILE = "ui.token"
TOKEN_HEADER = "x-orchestrate-token"
DEFAULT_HOST = "127.0.0.1"
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the dashboard listens."""

    host: str
    port: int

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


class BadListenAddress(ValueError):
    """``[HOST:]PORT`` could not be read; the message says what was expected."""


def parse_listen(text: str) -> Listen:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT``; the host defaults to 127.0.0.1 (only this
    machine). Port 0 asks the system for a free port."""
    host, port_text = DEFAULT_HOST, text.strip()
    if port_text.startswith("["):
        close = port_text.find("]")
        if close < 0 or port_text[close + 1:close + 2] != ":":
            raise BadListenAddress(f"expected [IPv6]:PORT, got {text!r}")
        host, port_text = port_text[1:close], port_text[close + 2:]
    elif ":" in port_text:
        host, _, port_text = port_text.rpartition(":")
    if not host:
        raise BadListenAddress(f"expected [HOST:]PORT, got {text!r} (no host before the colon)")
    try:
        port = int(port_text)
    except ValueError:
        raise BadListenAddress(f"expected [HOST:]PORT with a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise BadListenAddress(f"a port is 0..65535, got {port}")
    return Listen(host, port)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(state_dir: Path, token: str) -> Path:
    """Store ``token`` in ``<state_dir>/ui.token``, readable by the owner only (mode 0600 from
    creation: it is never on disk with looser permissions), replacing an older one."""
    path = state_dir / TOKEN_FILE
    temporary = state_dir / f".{TOKEN_FILE}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return path


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and secrets.compare_digest(given.encode(), token.encode())  # type: ignore[union-attr]


def same_origin(headers: Mapping[str, str], scheme: str) -> bool:
    """True when the request's ``Origin`` (else ``Referer``) is ``scheme://<its Host header>``.
    A request that carries neither is refused: browsers send ``Origin`` with every POST."""
    host = headers.get("host", "")
    origin = headers.get("origin")
    if origin is None or origin == "null":
        referer = headers.get("referer")
        if not referer:
            return False
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return bool(host) and origin == f"{scheme}://{host}"


def allowed_hosts(listen: Listen) -> frozenset[str] | None:
    """The host names requests may name: the listening address and, for a loopback address,
    the loopback names; ``None`` (any) when listening on every interface."""
    try:
        address = ipaddress.ip_address(listen.host)
    except ValueError:
        return frozenset({listen.host.lower()}) | _LOOPBACK_NAMES
    if address.is_unspecified:
        return None
    return frozenset({str(address)}) | (_LOOPBACK_NAMES if address.is_loopback else frozenset())


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header without its port (IPv6 without brackets), lower-cased."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")].lower()
    return host_header.rpartition(":")[0].lower() if ":" in host_header else host_header.lower()
