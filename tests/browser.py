"""A real Chromium for the tests: Debian's /usr/bin/chromium driven by Playwright's Python package.

Playwright never downloads a browser here (that fails on this network): it is pointed at the
system's Chromium, started headless with networking features off and a fresh profile. Without
Chromium the browser tests are skipped with the reason, except under CI (``CI`` set), where
``make test`` installs it and its absence is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATE = ROOT / "bin" / "orchestrate"
# Set to a directory (docs/) to save the screenshots the README shows.
SCREENSHOTS_ENV = "ORCHESTRATE_SCREENSHOTS"


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package when it is absent")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium chromium-driver); `make test` installs it")


@contextlib.contextmanager
def chromium_context(profile: Path) -> Iterator:
    """A headless Chromium with the fresh user-data-dir ``profile`` (the ``browser_context``
    fixture of tests/conftest.py gives one per test module)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def screenshot(page, name: str, full_page: bool = False) -> None:
    """Save ``page`` as ``<$ORCHESTRATE_SCREENSHOTS>/<name>.png`` when that is set."""
    directory = os.environ.get(SCREENSHOTS_ENV)
    if directory:
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=full_page)


class Runtime:
    """``orchestrate ARGS --ui 127.0.0.1:0`` running in ``cwd``; knows its dashboard's URL."""

    def __init__(self, cwd: Path, *args: str, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}
        self.process = subprocess.Popen(
            [sys.executable, str(ORCHESTRATE), *args, "--ui", "127.0.0.1:0"], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"the runtime ended before serving: {self.process.stderr.read()}")
            self.lines.append(line)
            found = re.search(r"dashboard at (http://\S+)/#token=(\S+)", line)
            if found:
                self.base, self.token = found.group(1), found.group(2)
                break
        else:
            raise AssertionError("no dashboard address printed in time: " + "".join(self.lines))
        for line in iter(self.process.stdout.readline, ""):
            self.lines.append(line)
            found = re.search(r"run (run-[0-9a-f]+)", line)
            if found:
                self.run_id = found.group(1)
                break

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.lines) + out, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=30)
