"""Capture the live terminal view of a real run, as README shows it (docs/live_view.svg/.png).

Runs ``orchestrate run`` on a pseudo-terminal in a scratch directory with a small demo plan
(a failing lint, a retry, a person's approval, tasks running), keeps what the terminal
received, takes the panel as it was drawn ``--at`` seconds in, and renders that frame with
rich to SVG; with ``--png``, Debian's Chromium turns the SVG into a PNG.

    .venv/bin/python docs/capture_live_view.py [--at 2.5] [--png]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from rich.console import Console
from rich.text import Text

HERE = Path(__file__).resolve().parent
ORCHESTRATE = HERE.parent / "bin" / "orchestrate"
# What rich's Live writes before each redraw: back to the panel's first line, clearing it.
_REDRAW = re.compile(rb"\r(?:\x1b\[2K\x1b\[1A)+\x1b\[2K")

PLAN = {"workstreams": [
    {"id": "lint", "tasks": [
        {"id": "ruff", "tool": "shell", "command": "ruff check --isolated --no-cache --output-format concise app.py"}]},
    {"id": "tests", "tasks": [
        {"id": "unit", "tool": "shell", "command": "sleep 3.5"},
        {"id": "flaky", "tool": "shell", "command": "test -f .second || { touch .second; echo 'connection reset' >&2; exit 1; }",
         "retry": {"max_attempts": 2, "backoff_s": 4, "jitter": 0}},
        {"id": "report", "tool": "shell", "command": "true", "depends_on": ["unit", "flaky"]}]},
    {"id": "docs", "tasks": [
        {"id": "render", "tool": "shell", "command": "sleep 1"},
        {"id": "spell", "tool": "shell", "command": "sleep 4", "depends_on": ["render"]}]},
    {"id": "release", "depends_on": ["tests"], "tasks": [
        {"id": "sign-off", "tool": "human", "prompt": "Ship 1.4?", "approval_timeout_s": 6},
        {"id": "publish", "tool": "shell", "command": "true", "depends_on": ["sign-off"]}]},
    {"id": "review", "tasks": [
        {"id": "approve-design", "tool": "human", "prompt": "Is the API design right?", "approval_timeout_s": 6}]},
]}


def capture(at_s: float, width: int) -> bytes:
    """The bytes of the panel as drawn ``at_s`` seconds into a real run."""
    work = Path(tempfile.mkdtemp(prefix="orchestrate-demo-"))
    try:
        (work / "app.py").write_text("import os\nimport sys\n\nprint(undefined_name)\n")
        (work / "plan.json").write_text(json.dumps(PLAN))
        master, slave = pty.openpty()
        env = os.environ | {"TERM": "xterm-256color", "COLUMNS": str(width), "LINES": "60"}
        process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", "plan.json"], cwd=work,
                                   stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        received, started = bytearray(), time.monotonic()
        offset = -1  # how much had arrived ``at_s`` seconds in
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                received += data
            if offset < 0 and time.monotonic() - started >= at_s:
                offset = len(received)
            if process.poll() is not None and not ready:
                break
        process.wait(timeout=60)
        os.close(master)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # A frame is whole when the next redraw follows it: the first whole one drawn after ``at_s``.
    redraws = list(_REDRAW.finditer(received))
    for this, following in pairwise(redraws):
        if this.start() >= offset:
            return bytes(received[this.end():following.start()])
    raise SystemExit("the run ended before a whole frame was drawn after --at; give a smaller --at")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=float, default=3.0, help="seconds into the run (default 3)")
    parser.add_argument("--width", type=int, default=110)
    parser.add_argument("--png", action="store_true", help="also make docs/live_view.png with Chromium")
    options = parser.parse_args()
    frame = capture(options.at, options.width)
    text = frame.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\x1b[?25l", b"")
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=options.width, file=sink, force_terminal=True)
        console.print(Text.from_ansi(text.decode("utf-8", "replace").rstrip("\n")))
    svg = HERE / "live_view.svg"
    console.save_svg(str(svg), title="orchestrate run plan.json")
    print(f"wrote {svg}")
    if options.png:
        png = HERE / "live_view.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tempfile.mkdtemp()}", "--hide-scrollbars", "--window-size=1400,900",
                        f"--screenshot={png}", svg.as_uri()], check=True, capture_output=True, timeout=120)
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
