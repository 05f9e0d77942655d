"""Task output logs are capped: a task printing hundreds of megabytes leaves a log of at most the
cap, holding its first and last bytes and a line saying how much was dropped; the task's result
is what it would have been (the child never blocks on us: it writes straight to the file)."""

from __future__ import annotations

import json
import re
import time

import pytest

from adapters.logcap import FASTEST_CHECK_S, SLOWEST_CHECK_S, CappedLog, next_check_in
from tests.conftest import ledger

MIB = 1024 * 1024
MARKER = re.compile(rb"\n\[orchestrate: output over the (\d+)-byte log cap; (at least )?(\d+) bytes dropped here")


def dropped_and_kept(log: bytes) -> tuple[int, int, bool]:
    """What the marker says was dropped, how many bytes of output the log still holds, and
    whether the count is exact (the marker says "at least" where the filesystem cannot punch
    holes and a cut may race with the task's writes)."""
    found = MARKER.search(log)
    assert found, "no truncation marker in the log"
    marker_end = log.index(b"\n", found.end()) + 1
    return int(found.group(3)), len(log) - (marker_end - found.start()), not found.group(2)


def assert_accounted(log: bytes, written: int) -> None:
    dropped, kept, exact = dropped_and_kept(log)
    if exact:
        assert dropped + kept == written
    else:
        assert dropped + kept <= written


def on_disk(path) -> int:
    return path.stat().st_blocks * 512


def test_a_task_printing_200_mb_leaves_a_capped_log_that_says_so_and_its_result_stands(tmp_path, orchestrate):
    total = 200_000_000
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": [
        {"id": "flood", "tool": "shell", "command": f"echo FIRST; yes | head -c {total}; echo; echo LAST; exit 3"},
        {"id": "quiet", "tool": "shell", "command": "echo small"}]}))
    result = orchestrate("run", str(plan), timeout=300)
    assert result.code == 1, result.out + result.err
    assert "✗ w/flood: exit code 3: LAST" in result.out  # the failure summary still reads the tail
    states = dict(ledger(tmp_path).execute("select task_key, state from tasks").fetchall())
    assert states == {"w/flood": "FAILED", "w/quiet": "COMPLETED"}
    log_path = ledger(tmp_path).execute("select log_path from step_attempts where step_name = 'w/flood'").fetchone()[0]
    log = open(log_path, "rb").read()
    assert len(log) <= 10 * MIB  # the default cap
    assert log.startswith(b"FIRST\ny\ny\n") and log.endswith(b"y\n\nLAST\n")
    assert_accounted(log, len(b"FIRST\n") + total + len(b"\nLAST\n"))
    assert open(log_path.replace("flood.log", "quiet.log"), "rb").read() == b"small\n"


def test_a_python_task_in_a_warm_worker_is_capped_too(tmp_path, orchestrate):
    (tmp_path / "noisy.py").write_text(
        "import sys\n"
        "def shout():\n"
        "    print('FIRST')\n"
        "    for _ in range(24):\n"
        "        sys.stdout.write('z' * 999_999 + '\\n')\n"
        "    print('LAST')\n"
        "    return 42\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "p", "tasks": [{"id": "shout", "tool": "python", "callable": "noisy:shout"}]}))
    result = orchestrate("run", str(plan), env={"ORCHESTRATE_TASK_LOG_MAX_MB": "2"}, timeout=300)
    assert result.code == 0, result.out + result.err
    log_path, returned = ledger(tmp_path).execute("select log_path, result_json from step_attempts").fetchone()
    assert json.loads(returned) == 42
    log = open(log_path, "rb").read()
    # The worker notes the return value last.
    assert len(log) <= 2 * MIB and log.startswith(b"FIRST\n") and log.endswith(b"LAST\nresult: 42\n")
    assert_accounted(log, len("FIRST\n") + 24 * 1_000_000 + len("LAST\nresult: 42\n"))


def test_a_log_under_the_cap_is_left_alone(tmp_path):
    path = tmp_path / "task.log"
    path.write_bytes(b"x" * 1000)
    cap = CappedLog(str(path), 4096, now=time.monotonic())
    cap.check(time.monotonic())
    cap.finish()
    assert path.read_bytes() == b"x" * 1000


def test_a_log_over_the_cap_takes_little_more_than_the_cap_on_disk_and_ends_exact(tmp_path):
    path = tmp_path / "task.log"
    cap = CappedLog(str(path), 1 * MIB, now=0.0)
    written = b""
    with open(path, "ab") as child:  # the task's own descriptor, as posix_spawn gives it
        for n in range(200):
            chunk = (f"line {n} " + "." * 65_000 + "\n").encode()
            child.write(chunk)
            child.flush()
            written += chunk
            cap.check(float(n))
            # The cap, what arrived since the last look, and the filesystem's own blocks.
            assert on_disk(path) <= 1 * MIB + 4 * len(chunk)
    cap.finish()
    log = path.read_bytes()
    assert len(log) <= 1 * MIB
    assert log.startswith(written[:MIB // 2])
    dropped, kept, exact = dropped_and_kept(log)
    assert exact and dropped + kept == len(written)
    assert log.endswith(written[-(kept - MIB // 2):])


def test_a_fast_growing_log_is_looked_at_sooner():
    assert next_check_in(0, MIB) == SLOWEST_CHECK_S
    assert next_check_in(MIB // 100, MIB) == SLOWEST_CHECK_S
    assert FASTEST_CHECK_S < next_check_in(4 * MIB, MIB) < SLOWEST_CHECK_S
    assert next_check_in(10**12, MIB) == FASTEST_CHECK_S


@pytest.mark.parametrize(("variable", "value"), [("ORCHESTRATE_TASK_LOG_MAX_MB", "ten"),
                                                 ("ORCHESTRATE_TASK_LOG_MAX_MB", "nan"),
                                                 ("ORCHESTRATE_LOG_STREAM_MAX_MB", "-1")])
def test_a_bad_cap_setting_is_refused_with_exit_2_and_runs_nothing(tmp_path, orchestrate, variable, value):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": [{"id": "t", "tool": "shell", "command": "touch ran"}]}))
    result = orchestrate("run", str(plan), env={variable: value})
    assert result.code == 2 and f"{variable}={value!r}: expected a number of MiB" in result.err
    assert "Traceback" not in result.err and not (tmp_path / "ran").exists()


def test_a_flood_cut_short_by_kill_9_is_capped_when_the_run_resumes(tmp_path, orchestrate):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ORCHESTRATE, wait_until

    hold = tmp_path / "hold"
    plan = tmp_path / "plan.json"
    # Floods past the cap, then waits: the runtime dies with the log's last cut not made.
    plan.write_text(json.dumps({"id": "w", "tasks": [{"id": "flood", "tool": "shell", "command":
        f"yes | head -c 30000000; echo; echo LAST; while [ ! -e {hold} ]; do sleep 0.05; done"}]}))
    env = {**os.environ, "ORCHESTRATE_TASK_LOG_MAX_MB": "1"}
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "run", str(plan)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / ".state" / "logs"
    try:
        def flooded_and_released() -> bool:
            found = list(log.glob("run-*/w/flood.log"))
            return bool(found) and found[0].read_bytes()[-6:] == b"\nLAST\n" and on_disk(found[0]) <= 2 * MIB
        # While the task runs, what is past the cap leaves the disk.
        wait_until(flooded_and_released, timeout=120, what="the flood to be written and released")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    hold.touch()
    path = next(log.glob("run-*/w/flood.log"))
    assert path.stat().st_size > 30_000_000  # sparse: the last cut was never made
    run_id = path.parent.parent.name
    resumed = orchestrate("execute", "--run", run_id, env={"ORCHESTRATE_TASK_LOG_MAX_MB": "1"}, timeout=300)
    assert resumed.code == 0, resumed.out + resumed.err
    first = path.read_bytes()
    assert len(first) <= MIB and first.endswith(b"\nLAST\n")
    assert_accounted(first, 30_000_000 + len(b"\nLAST\n"))
