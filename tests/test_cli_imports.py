"""Import discipline of the command line: each command imports only what it uses.

`orchestrate --help` used to import the whole runtime (SQLAlchemy, the models, pykka, the
actors, structlog): over half a second before printing a line. Each command's modules are now
imported when it runs (see ``cli.main``). These tests run a command in a fresh interpreter and
list the modules it imported, so a heavy import added at the top of a module on a command's
path fails here, naming the module and the chain that pulled it in. Speed itself is measured
by benchmarks, never by timed tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs `cli.main.main(ARGS)` and writes every module imported by then, with who imported it
# first (the frame that triggered the import), to the file named by the first argument.
_PROBE = r"""
import builtins, json, sys
out, args = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, ROOT)
first_importer = {}
real_import = builtins.__import__
def tracing_import(name, globals=None, *rest, **kwargs):
    importer = (globals or {}).get("__name__", "?")
    before = set(sys.modules)
    try:
        return real_import(name, globals, *rest, **kwargs)
    finally:
        for module in set(sys.modules) - before:
            first_importer.setdefault(module, importer)
builtins.__import__ = tracing_import
import cli.main
try:
    code = cli.main.main(args)
except SystemExit as exit:
    code = exit.code
with open(out, "w") as handle:
    json.dump({"code": code, "modules": first_importer, "loaded": sorted(sys.modules)}, handle)
""".replace("ROOT", repr(str(ROOT)))

# What no command but those that run the actor runtime may import.
RUNTIME = ("pykka", "structlog", "psutil", "actors", "adapters", "messages")
# Slow to import and needed only on rare paths: migrations of an old database (alembic), a
# document the compiled validator refused (jsonschema), YAML plans (yaml).
RARE = ("alembic", "jsonschema", "referencing", "yaml", "mako")
DATABASE = ("sqlalchemy", "persistence", "sqlite3")


def imported(tmp_path: Path, *args: str) -> tuple[int, dict[str, str], set[str]]:
    out = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", _PROBE, str(out), json.dumps(list(args))],
                            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.exists(), result.stderr
    report = json.loads(out.read_text())
    return report["code"], report["modules"], set(report["loaded"])


def chain(modules: dict[str, str], name: str) -> str:
    """``name <- its importer <- ...``: how a module was pulled in."""
    links = [name]
    while (name := modules.get(name, "?")) not in ("?", "__main__") and name not in links:
        links.append(name)
    return " <- ".join(links)


def assert_none_of(packages: tuple[str, ...], modules: dict[str, str], loaded: set[str]) -> None:
    offending = sorted(m for m in loaded if m.split(".")[0] in packages)
    tops = sorted({m for m in offending if "." not in m} or set(offending))
    assert not offending, "imported: " + "; ".join(chain(modules, m) for m in tops)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["status", "--help"]])
def test_help_and_version_import_nothing_of_the_runtime_nor_the_database(tmp_path, args):
    code, modules, loaded = imported(tmp_path, *args)
    assert code == 0
    ours = ("cli.main", "cli.errors", "cli.signals", "cli")
    assert {m for m in loaded if m.split(".")[0] == "cli"} <= set(ours)
    assert_none_of(RUNTIME + RARE + DATABASE + ("control", "domain", "planning", "persistence"), modules, loaded)


def test_building_the_parser_imports_nothing_heavy(tmp_path):
    probe = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import cli.main; cli.main.build_parser(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('sqlalchemy', 'pykka', 'structlog', 'psutil', 'actors', 'persistence', 'messages', 'jsonschema')))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_version_is_the_package_version(tmp_path):
    from importlib.metadata import version

    result = subprocess.run([sys.executable, str(ROOT / "bin" / "orchestrate"), "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"orchestrate {version('orchestrate')}"


def test_status_without_a_runtime_imports_only_the_control_client(tmp_path):
    code, modules, loaded = imported(tmp_path, "--state-dir", str(tmp_path / "state"), "status")
    assert code == 3  # nobody is listening
    assert "control.client" in loaded
    assert_none_of(RUNTIME + RARE + DATABASE, modules, loaded)


@pytest.mark.parametrize("args", [["runs"], ["db", "inspect"], ["db", "init"], ["report", "run-x"]])
def test_ledger_commands_import_the_database_but_not_the_runtime(tmp_path, args):
    code, modules, loaded = imported(tmp_path, "--state-dir", str(tmp_path / "state"), *args)
    assert code == (2 if args[0] == "report" else 0)  # the report of a run the ledger lacks: refused
    assert {"sqlalchemy", "persistence.reader"} <= loaded
    assert_none_of(RUNTIME + RARE + ("control", "starlette", "uvicorn"), modules, loaded)


def test_validate_imports_planning_only(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell",
                                                                           "command": "true"}]}))
    code, modules, loaded = imported(tmp_path, "validate", "plan.json")
    assert code == 0
    assert_none_of(RUNTIME + RARE + DATABASE + ("control",), modules, loaded)


def test_a_run_imports_the_runtime_but_nothing_it_does_not_use(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"id": "ws", "tasks": [{"id": "t", "tool": "shell",
                                                                           "command": "true"}]}))
    code, modules, loaded = imported(tmp_path, "--state-dir", str(tmp_path / "state"), "run", "plan.json", "-q")
    assert code == 0
    assert {"pykka", "sqlalchemy", "actors.runtime"} <= loaded
    # A fresh database is created without Alembic; a valid plan needs no Python validator; no
    # client connects, so the control requests' validator is never built.
    assert_none_of(RARE, modules, loaded)
    for unused in ("control.client", "cli.missions", "planning.missions", "actors.agent_executor",
                   "actors.ledger_session", "views", "jinja2", "starlette", "uvicorn"):
        assert unused not in loaded, chain(modules, unused)


def test_a_command_ends_with_its_output_flushed_its_code_and_its_database_closed(tmp_path, orchestrate, write_plan):
    """The program exits without tearing the interpreter down (see ``cli.main.console``): what
    it printed still arrives, its exit code is the command's, and the ledger's connections
    were closed first (SQLite removes the WAL file when the last one closes)."""
    write_plan({"id": "ws", "tasks": [{"id": "t", "tool": "shell", "command": "true"},
                                       {"id": "bad", "tool": "shell", "command": "exit 4"}]})
    result = orchestrate("run", "plan.json", "-q")
    assert result.code == 1, result.err
    assert "run run-" in result.out and "1 completed, 1 failed" in result.out and "bad:" in result.out
    state = tmp_path / ".state"
    assert (state / "orchestration.db").exists() and not (state / "orchestration.db-wal").exists()
    listed = orchestrate("runs", "--json")
    assert listed.code == 0 and listed.json()[0]["task_counts"] == {"COMPLETED": 1, "FAILED": 1}
    assert orchestrate("--state-dir", "nowhere", "status").code == 3
