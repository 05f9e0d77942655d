"""Failures that explain themselves: the lines picked from real pytest, ruff and Python output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from domain.failure_lines import signal_lines, summary

BIN = Path(sys.executable).parent


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A tiny project with a failing test, a test whose fixture errors, and a lint error."""
    (tmp_path / "calc.py").write_text("import os\n\ndef add(a, b):\n    return a - b\n")
    (tmp_path / "test_calc.py").write_text(
        "from calc import add\n\ndef test_add():\n    assert add(2, 2) == 4\n\ndef test_ok():\n    assert True\n")
    (tmp_path / "test_broken.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef db():\n    raise RuntimeError('no database')\n\n"
        "def test_query(db):\n    pass\n")
    return tmp_path


def _output(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    return done.stdout + done.stderr


def test_pytest_failures_are_its_short_summary_lines(broken: Path) -> None:
    output = _output([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], broken)
    lines = signal_lines(output, "pytest")
    assert any(line.startswith("FAILED test_calc.py::test_add") and "assert" in line for line in lines)
    assert any(line.startswith("ERROR test_broken.py::test_query") for line in lines)
    assert not any("passed" in line or line.startswith("=") for line in lines)


def test_a_pytest_id_that_does_not_exist_shows_not_found_not_the_last_line(broken: Path) -> None:
    output = _output([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_calc.py::test_nope"],
                     broken)
    assert output.strip().splitlines()[-1].startswith("(no match")  # what a last-line summary showed
    assert signal_lines(output, "pytest")[0] == "ERROR: not found: " + str(broken / "test_calc.py::test_nope")


def test_ruff_failures_are_its_diagnostics_not_the_fixable_hint(broken: Path) -> None:
    output = _output([str(BIN / "ruff"), "check", "--isolated", "--no-cache", "--output-format", "concise", "calc.py"], broken)
    assert "fixable with" in output.strip().splitlines()[-1]
    lines = signal_lines(output, "ruff")
    assert "calc.py:1:8: F401 [*] `os` imported but unused" in lines
    assert all(line.startswith("calc.py:") for line in lines)
    full = _output([str(BIN / "ruff"), "check", "--isolated", "--no-cache", "calc.py"], broken)
    assert " --> calc.py:1:8" in full  # ruff's default format names the place on the next line
    assert signal_lines(full, "ruff") == lines


def test_a_python_traceback_is_its_last_frame_and_exception(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("def inner():\n    raise ValueError('bad row 7')\n\ndef outer():\n    inner()\n\nouter()\n")
    output = _output([sys.executable, str(script)], tmp_path)
    assert signal_lines(output) == [f'File "{script}", line 2, in inner', "ValueError: bad row 7"]


def test_anything_else_is_its_last_non_empty_lines() -> None:
    text = "starting\n\nstep 1 ok\nstep 2: disk quota exceeded\n\n\n"
    assert signal_lines(text, limit=2) == ["step 1 ok", "step 2: disk quota exceeded"]
    assert signal_lines("") == [] and summary("  \n") == ""
    assert summary(text) == "step 2: disk quota exceeded"  # a message: the last line alone


def test_many_failures_are_cut_to_the_limit_and_say_how_many_more() -> None:
    text = "\n".join(f"FAILED t.py::test_{i} - assert 0" for i in range(9))
    lines = signal_lines(text, limit=3)
    assert lines == ["FAILED t.py::test_0 - assert 0", "FAILED t.py::test_1 - assert 0", "… and 7 more"]
    assert summary(text, limit=2) == "FAILED t.py::test_0 - assert 0; … and 8 more"
