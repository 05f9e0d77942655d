"""The command line builds only the parser of the command it runs: it must parse exactly as the
full parser does, and fall back to the full one whenever the command is not plain to see."""

from __future__ import annotations

import pytest

from cli.main import build_parser, command_named

ARGVS = [
    ["run", "plan.json", "-q", "-j", "2"],
    ["--state-dir", "s", "run", "--mission", "run_tests", "--param", "a=1"],
    ["--state-dir=s", "execute", "--run", "run-1", "--db-stall-limit", "5"],
    ["serve", "--socket", "/tmp/x.sock"],
    ["validate", "p.yaml", "--json"],
    ["route", "p.json"],
    ["plan", "--mission", "daily_loop", "-o", "out.json"],
    ["request", "-w", "ws-a", "-w", "ws-b", "--run-id", "r"],
    ["runs"],
    ["runs", "show", "run-1", "--json"],
    ["db", "init"],
    ["db", "inspect", "--json"],
    ["status", "run-1", "--json"],
    ["cancel", "run-1", "ws/t"],
    ["approve", "run-1", "ws/t", "-m", "ok"],
    ["submit", "p.json", "-j", "3"],
    ["shutdown", "--timeout-s", "5"],
    ["watch"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda argv: " ".join(argv))
def test_the_one_command_parser_parses_as_the_full_one(argv):
    assert command_named(argv) in {word for word in argv if not word.startswith("-")}
    assert vars(build_parser(command_named(argv)).parse_args(argv)) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["--version"], ["--state", "s", "run", "p"], ["-h", "run"], ["--", "run"], ["--state-dir"],
])
def test_anything_less_plain_gets_the_full_parser(argv):
    assert command_named(argv) is None


def test_an_unknown_command_gets_the_full_parser_and_its_error(capsys):
    parser = build_parser(command_named(["nonsense"]))
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["nonsense"])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'nonsense'" in error and "'shutdown'" in error  # every command listed


def test_the_one_command_parser_has_that_command_only():
    choices = build_parser("runs")._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) == {"runs"}
    full = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"run", "runs", "db", "status", "shutdown"} <= set(full)


def test_a_bug_in_a_command_is_one_line_and_exit_3(tmp_path, monkeypatch, capsys):
    import structlog

    import cli.reading
    from cli.main import main

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli.reading, "cmd_runs", broken)
    try:
        code = main(["--state-dir", str(tmp_path / "state"), "runs"])
    finally:
        structlog.reset_defaults()  # main() pointed structlog at this test's captured stderr
    assert code == 3
    err = capsys.readouterr().err
    assert "orchestrate: internal error: RuntimeError: boom" in err
