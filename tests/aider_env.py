"""The real aider CLI for tests, in its own virtualenv under the repo (``.venv-aider/``).

aider pins ~100 dependencies exactly (litellm, openai, numpy, scipy, tree-sitter, ...), so it
never shares orchestrate's virtualenv. :func:`aider_executable` installs it on first use and
reuses it afterwards:

- ``python -m venv .venv-aider && .venv-aider/bin/pip install aider-chat==AIDER_VERSION``,
  using the interpreter running the tests (aider supports Python 3.10-3.12);
- concurrent callers (pytest-xdist workers, parallel test runs) are serialised by an
  exclusive ``fcntl`` lock on ``.venv-aider/.install.lock``: one installs, the others wait and
  then reuse its result;
- an install counts only once ``.venv-aider/.installed`` names the pinned version, so an
  interrupted install is resumed and a version bump reinstalls;
- measured here: ~50 s on 2 cores with a cold pip cache, a few seconds to reuse.

``ORCHESTRATE_SKIP_AIDER=1`` is the only way to get ``None`` (tests then skip and say why).
Otherwise a failed install raises :class:`AiderInstallError` with the end of pip's log, so
the test fails loudly instead of skipping silently.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

AIDER_VERSION = "0.86.2"
ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-aider"
SKIP_ENV = "ORCHESTRATE_SKIP_AIDER"
INSTALL_TIMEOUT_S = 900

_MARKER = VENV / ".installed"
_LOCK = VENV / ".install.lock"
_LOG = VENV / "install.log"


class AiderInstallError(RuntimeError):
    """Installing the pinned aider failed; the message ends with pip's log."""


def _executable() -> Path:
    return VENV / "bin" / "aider"


def _installed() -> bool:
    try:
        return _MARKER.read_text().strip() == AIDER_VERSION and os.access(_executable(), os.X_OK)
    except OSError:
        return False


def _run(argv: list[str], log) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    completed = subprocess.run(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, timeout=INSTALL_TIMEOUT_S
    )
    if completed.returncode != 0:
        log.flush()
        tail = _LOG.read_text(errors="replace")[-3000:]
        raise AiderInstallError(
            f"installing aider-chat=={AIDER_VERSION} into {VENV} failed: {argv[0]} exited "
            f"{completed.returncode}; set {SKIP_ENV}=1 to skip the real-aider tests. Log tail:\n{tail}"
        )


def install_aider() -> float:
    """Install (or finish installing) the pinned aider into :data:`VENV`; returns seconds spent
    (0.0 when it was already there). Safe to call from several processes at once."""
    VENV.mkdir(parents=True, exist_ok=True)
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process installs
        try:
            if _installed():
                return 0.0
            started = time.monotonic()
            with open(_LOG, "a") as log:
                # No --clear: the lock file lives in the directory; venv over an existing one
                # (from an interrupted install) just refreshes it.
                _run([sys.executable, "-m", "venv", str(VENV)], log)
                _run(
                    [str(VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                     "--progress-bar", "off", f"aider-chat=={AIDER_VERSION}"],
                    log,
                )
            if not os.access(_executable(), os.X_OK):
                raise AiderInstallError(f"pip installed aider-chat=={AIDER_VERSION} but {_executable()} is missing")
            elapsed = time.monotonic() - started
            _MARKER.write_text(f"{AIDER_VERSION}\n")
            with open(_LOG, "a") as log:
                log.write(f"installed aider-chat=={AIDER_VERSION} in {elapsed:.1f}s\n")
            return elapsed
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def aider_executable() -> Path | None:
    """The pinned aider CLI, installed on first use; None only when ``ORCHESTRATE_SKIP_AIDER=1``."""
    if os.environ.get(SKIP_ENV, "").strip() == "1":
        return None
    if not _installed():
        install_aider()
    return _executable()
