"""``orchestrate report RUN [-o FILE]``: write the run's self-contained HTML report.

Reads the ledger only (no runtime, no actors); the file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from cli.errors import EXIT_OK, EXIT_USAGE, CliError
from cli.reading import open_ledger


def cmd_report(args: argparse.Namespace) -> int:
    from views.report import RunNotFound, report_html

    engine, _ = open_ledger(args)
    try:
        html = report_html(engine, args.run_id)
    except RunNotFound:
        raise CliError(f"no run {args.run_id!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE) from None
    finally:
        engine.dispose()
    if args.output == "-":
        sys.stdout.write(html)
        return EXIT_OK
    target = Path(args.output or f"{args.run_id}.report.html")
    write_whole(target, html)
    print(f"wrote {target} ({len(html.encode()) // 1024} KiB): open it in a browser; it needs no network")
    return EXIT_OK


def write_whole(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary file beside it, so a reader never sees
    half a report; a target that cannot be written is a usage error naming it."""
    try:
        if target.is_dir():
            raise CliError(f"cannot write the report to {target}: it is a directory; give a file name with -o",
                           EXIT_USAGE)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    except OSError as error:
        raise CliError(f"cannot write the report to {target}: {error.strerror}", EXIT_USAGE) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise CliError(f"cannot write the report to {target}: {error.strerror}", EXIT_USAGE) from None
