"""What a hostile or careless task does to results and incremental runs, through the real
command line: special files where a result or an input file should be, JSON other readers
refuse, files changing shape between runs. Each was a hang, a crashed executor or a silent
wrong value before it was a test."""

from __future__ import annotations

import os

from tests.conftest import ledger


def _attempts(tmp_path) -> dict[str, dict]:
    db = ledger(tmp_path)
    rows = db.execute("select step_name, status, message, result_json from step_attempts").fetchall()
    return {row["step_name"]: dict(row) for row in rows}


def test_a_result_that_is_a_fifo_a_device_nan_or_not_utf8_fails_its_task_and_nothing_else(
        tmp_path, orchestrate, write_plan):
    output = '"$ORCHESTRATE_OUTPUT"'
    plan = write_plan({"id": "w", "tasks": [
        # Opening a FIFO for reading blocks until a writer comes; /dev/zero never ends.
        {"id": "fifo", "tool": "shell", "command": f"rm -f {output}; mkfifo {output}"},
        {"id": "zero", "tool": "shell", "command": f"rm -f {output}; ln -s /dev/zero {output}"},
        {"id": "nan", "tool": "shell", "command": f"echo '[NaN, 1]' > {output}"},
        {"id": "bytes", "tool": "shell", "command": f"printf '\"\\377\\376\"' > {output}"},
        {"id": "fine", "tool": "shell", "command": f"echo '{{\"ok\": true}}' > {output}",
         "depends_on": ["fifo", "zero", "nan", "bytes"], "allow_failure": False},
        {"id": "sibling", "tool": "shell", "command": f"echo 7 > {output}"},
    ]})
    result = orchestrate("run", str(plan), timeout=120)
    assert result.code == 1, result.out + result.err
    rows = _attempts(tmp_path)
    assert rows["w/fifo"]["status"] == "FAILED" and "not a regular file" in rows["w/fifo"]["message"]
    assert rows["w/zero"]["status"] == "FAILED" and "not a regular file" in rows["w/zero"]["message"]
    assert rows["w/nan"]["status"] == "FAILED" and "NaN is not JSON" in rows["w/nan"]["message"]
    assert rows["w/bytes"]["status"] == "FAILED" and "not UTF-8" in rows["w/bytes"]["message"]
    # The executor lived on: the task beside them completed with its result.
    assert rows["w/sibling"]["status"] == "COMPLETED" and rows["w/sibling"]["result_json"].strip() == "7"
    assert "crashed" not in result.out + result.err
    assert "Traceback" not in result.out + result.err


def test_special_files_among_files_in_are_not_read_and_the_task_still_caches(tmp_path, orchestrate, write_plan):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    os.mkfifo(data / "pipe")
    (data / "zero").symlink_to("/dev/zero")
    (data / "gone").symlink_to(tmp_path / "nowhere")
    plan = write_plan({"id": "w", "tasks": [
        {"id": "read", "tool": "shell", "command": "cat data/a.txt > /dev/null", "files_in": ["data", "data/*"]}]})
    explained = orchestrate("run", str(plan), "--explain", timeout=60)
    assert explained.code == 0, explained.out + explained.err
    first = orchestrate("run", str(plan), timeout=60)
    assert first.code == 0, first.out + first.err
    second = orchestrate("run", str(plan), timeout=60)
    assert second.code == 0 and "cached" in second.out, second.out + second.err
    (data / "a.txt").write_text("b\n")
    third = orchestrate("run", str(plan), "--explain", timeout=60)
    assert "w/read  run" in third.out, third.out
