"""A plain shell command runs its program directly, as make does; anything a shell would
treat differently still goes through ``/bin/sh -c``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adapters.tools import SHELL, ShellAdapter, direct_argv
from domain.plan import TaskSpec

PATH = os.environ.get("PATH", os.defpath)


@pytest.mark.parametrize(
    "command, argv",
    [
        ("true", ("true",)),
        ("sleep 0.25", ("sleep", "0.25")),
        ("git status --short", ("git", "status", "--short")),
        ("ls -la /tmp", ("ls", "-la", "/tmp")),
        ("/bin/true a=b c,d", ("true", "a=b", "c,d")),
    ],
)
def test_plain_words_naming_a_program_run_it_directly(command: str, argv: tuple[str, ...]) -> None:
    direct = direct_argv(command, PATH)
    assert direct is not None
    program, *args = direct
    assert os.path.isabs(program) and os.access(program, os.X_OK)  # found on the task's PATH
    assert (os.path.basename(program), *args) == argv


@pytest.mark.parametrize(
    "command",
    [
        "",  # the shell's answer to nothing is exit 0
        "echo hi",  # dash's echo interprets escapes, /bin/echo does not
        "cd /tmp",
        "FOO=1 true",
        "true; false",
        "true && false",
        "ls *.py",
        "cat < x",
        "echo $HOME",
        "printf 'a b'",
        'grep "a b" f',
        "ls ~",
        "true  # comment",
        "true  ",  # odd spacing: not worth a second guess
        "no-such-program-xyz",  # the shell says "not found" and exits 127, as before
        "./script.sh",  # relative to the task's cwd, not ours
        "exec sleep 1",
        "kill -0 1",
    ],
)
def test_anything_else_goes_to_the_shell(command: str) -> None:
    assert direct_argv(command, PATH) is None


def test_a_file_exec_cannot_start_goes_to_the_shell(tmp_path: Path) -> None:
    script = tmp_path / "noshebang"
    script.write_text("echo from a shell script without #!\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert direct_argv("noshebang", str(tmp_path)) is None  # sh runs it as a script
    shebang = tmp_path / "withshebang"
    shebang.write_text("#!/bin/sh\necho hi\n")
    shebang.chmod(shebang.stat().st_mode | stat.S_IXUSR)
    assert direct_argv("withshebang", str(tmp_path)) == (str(shebang),)
    (tmp_path / "adir").mkdir()
    assert direct_argv("adir", str(tmp_path)) is None


def test_the_adapter_spec_names_the_program_and_keeps_the_tasks_cwd_and_env(tmp_path: Path) -> None:
    task = TaskSpec(workstream_id="ws", id="t", tool="shell", command="sleep 1", cwd=str(tmp_path),
                    env=(("A", "1"),))
    spec = ShellAdapter().process_spec(task, str(tmp_path / "t.log"))
    assert spec.argv[0].endswith("/sleep") and spec.argv[1:] == ("1",)
    assert spec.cwd == str(tmp_path) and ("A", "1") in spec.env
    shell_task = TaskSpec(workstream_id="ws", id="t", tool="shell", command="echo $A", cwd=str(tmp_path))
    shell_spec = ShellAdapter().process_spec(shell_task, str(tmp_path / "t.log"))
    assert shell_spec.argv == (SHELL, "-c", "echo $A")
