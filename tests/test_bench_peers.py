"""The peer benchmark's harness (bench/peers.py) on tiny workloads, so it cannot silently rot:
it runs, its table has every row, and its exactly-once checks refuse a task done twice,
a task never done and a failed task -- in the ledger read directly and end to end."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ORCHESTRATE, ROOT

PEERS_PY = ROOT / "bench" / "peers.py"
_spec = importlib.util.spec_from_file_location("bench_peers", PEERS_PY)
peers = importlib.util.module_from_spec(_spec)
sys.modules["bench_peers"] = peers  # dataclasses look their module up by name
_spec.loader.exec_module(peers)

TINY = ["--scale", "0.005", "--repeat", "1", "--startup-repeat", "1"]
HAVE_MAKE = shutil.which("make") is not None
MISSING_EXTRA = [name for name in ("doit", "dask") if importlib.util.find_spec(name) is None]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PEERS_PY), *args], check=False, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_the_layered_graph_has_three_deps_in_the_layer_before():
    tasks = peers.layered(10, 50)
    assert len(tasks) == 500
    ids = [task.id for task in tasks]
    assert len(set(ids)) == 500
    for index, task in enumerate(tasks):
        layer, i = divmod(index, 50)
        if layer == 0:
            assert task.deps == ()
        else:
            assert task.deps == tuple(sorted(ids[(layer - 1) * 50 + (i + d) % 50] for d in range(3)))


def test_orchestrate_rows_run_and_are_verified(tmp_path):
    chosen = ["make", "orchestrate"] if HAVE_MAKE else ["orchestrate"]
    out = tmp_path / "peers.json"
    result = bench(*TINY, "--peers", *chosen, "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(out.read_text())
    assert [row["row"] for row in document["rows"]] == ["independent", "layered", "python", "values", "sleep", "help",
                                                        "one"]
    for row in document["rows"]:
        assert row["median_s"]["orchestrate"] > 0, row
    tasks = {row["row"]: row["tasks"] for row in document["rows"]}
    assert tasks == {"independent": 5, "layered": 30, "python": 30, "values": 30, "sleep": 1, "help": 0, "one": 1}
    assert "| 5 × true, independent |" in result.stdout
    if HAVE_MAKE:
        assert "vs make" in result.stdout


@pytest.mark.skipif(bool(MISSING_EXTRA), reason=f"{' and '.join(MISSING_EXTRA)} not installed "
                    "(the bench extra: pip install -e '.[bench]')")
def test_doit_and_dask_rows_run_and_are_verified(tmp_path):
    out = tmp_path / "peers.json"
    result = bench(*TINY, "--only", "layered", "python", "values", "--peers", "doit", "dask", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["row"] for row in rows] == ["layered", "python", "values"]
    for row in rows:
        assert set(row["median_s"]) == {"doit", "dask"}, row
    assert "doit 0.36" in result.stdout


# --- the checks refuse what is not exactly once ------------------------------------------


@pytest.fixture(scope="module")
def real_ledger(tmp_path_factory):
    """A ledger of a real orchestrate run of five `true` tasks, and its workload."""
    work = tmp_path_factory.mktemp("ledger")
    workload = peers.Workload("five", "five", "true", peers.independent(5))
    peers.write_inputs(work, workload)
    env = peers.environment(peers.PYCACHE)
    peers.run_peer("orchestrate", workload, work, [sys.executable, str(ORCHESTRATE)], env)
    return work / "state" / "orchestration.db", workload


def altered(tmp_path, ledger, *statements):
    copy = tmp_path / "orchestration.db"
    shutil.copy(ledger, copy)
    with sqlite3.connect(copy) as db:
        for statement in statements:
            assert db.execute(statement).rowcount >= 1, statement
    return copy


def test_the_real_ledger_passes(real_ledger):
    ledger, workload = real_ledger
    peers.verify_ledger(ledger, workload)


def test_a_task_done_twice_is_refused(tmp_path, real_ledger):
    ledger, workload = real_ledger
    twice = altered(tmp_path, ledger,
                    "insert into step_attempts (run_id, ws_id, step_name, attempt, status, started_at) "
                    "select run_id, ws_id, step_name, 2, status, started_at from step_attempts "
                    "where step_name = 'bench/t00002'",
                    "update tasks set attempts = 2 where task_key = 'bench/t00002'")
    with pytest.raises(peers.NotExactlyOnce, match=r"1 ran more than once \(e.g. t00002 x2\)"):
        peers.verify_ledger(twice, workload)


def test_a_task_counted_twice_only_in_the_tasks_table_is_refused(tmp_path, real_ledger):
    ledger, workload = real_ledger
    retried = altered(tmp_path, ledger, "update tasks set attempts = 2 where task_key = 'bench/t00004'")
    with pytest.raises(peers.NotExactlyOnce, match=r"not COMPLETED in exactly one attempt.*t00004"):
        peers.verify_ledger(retried, workload)


def test_a_task_never_done_is_refused(tmp_path, real_ledger):
    ledger, workload = real_ledger
    missing = altered(tmp_path, ledger, "delete from step_attempts where step_name = 'bench/t00003'")
    with pytest.raises(peers.NotExactlyOnce, match=r"1 never ran \(e.g. t00003\)"):
        peers.verify_ledger(missing, workload)
    bigger = peers.Workload("six", "six", "true", peers.independent(6))
    with pytest.raises(peers.NotExactlyOnce, match=r"never ran \(e.g. t00005\)"):
        peers.verify_ledger(ledger, bigger)


def test_a_failed_task_is_refused(tmp_path, real_ledger):
    ledger, workload = real_ledger
    failed = altered(tmp_path, ledger, "update step_attempts set status = 'FAILED' where step_name = 'bench/t00000'",
                     "update tasks set state = 'FAILED' where task_key = 'bench/t00000'")
    with pytest.raises(peers.NotExactlyOnce, match=r"t00000"):
        peers.verify_ledger(failed, workload)


def test_the_output_checks_of_make_doit_and_dask_refuse_twice_and_missing():
    workload = peers.Workload("three", "three", "true", peers.independent(3))
    make_out = ("Makefile:3: target 't00000' does not exist\ntrue\nMakefile:5: target 't00001' does not exist\ntrue\n"
                "Makefile:5: target 't00001' does not exist\ntrue\n")
    with pytest.raises(peers.NotExactlyOnce, match=r"never ran \(e.g. t00002\); 1 ran more than once"):
        peers.check_exactly_once("make", peers.make_ran(make_out, workload), workload.ids)
    with pytest.raises(peers.NotExactlyOnce, match="traced 1 targets but echoed 2"):
        peers.make_ran("Makefile:3: target 't00000' does not exist\ntrue\ntrue\n", workload)
    with pytest.raises(peers.NotExactlyOnce, match=r"1 never ran \(e.g. t00001\)"):
        peers.check_exactly_once("doit", peers.doit_ran(".  t00000\n.  t00002\n-- t00001\n"), workload.ids)
    with pytest.raises(peers.NotExactlyOnce, match="reported"):
        peers.dask_ran("ran t00000\nran t00001\nran t00002\ncalls 4\n")
    peers.check_exactly_once("dask", peers.dask_ran("ran t00001\nran t00000\nran t00002\ncalls 3\n"), workload.ids)


def test_the_benchmark_exits_non_zero_when_orchestrate_does_a_task_twice(tmp_path):
    """End to end: an orchestrate that really runs, then shows one task done twice in its ledger."""
    wrapper = tmp_path / "twice.py"
    wrapper.write_text(textwrap.dedent(f"""\
        import sqlite3, subprocess, sys
        code = subprocess.run([sys.executable, {str(ORCHESTRATE)!r}, *sys.argv[1:]]).returncode
        state = sys.argv[sys.argv.index("--state-dir") + 1]
        with sqlite3.connect(state + "/orchestration.db") as db:
            db.execute("insert into step_attempts (run_id, ws_id, step_name, attempt, status, started_at) "
                       "select run_id, ws_id, step_name, 2, status, started_at from step_attempts limit 1")
        sys.exit(code)
        """))
    result = bench(*TINY, "--only", "independent", "--peers", "orchestrate",
                   "--orchestrate", f"{sys.executable} {wrapper}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "a run failed its check" in result.stderr
    assert "ran more than once (e.g. t00000 x2)" in result.stderr


def test_the_benchmark_exits_non_zero_when_orchestrate_fails(tmp_path):
    result = bench(*TINY, "--only", "independent", "--peers", "orchestrate", "--orchestrate", "false")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "orchestrate exited 1" in result.stderr
