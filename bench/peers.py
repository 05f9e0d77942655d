"""Peer benchmark: orchestrate against make, doit and dask on the same workloads, in one invocation.

    python bench/peers.py [--repeat 3] [--only ROW ...] [--peers PEER ...]
                          [--orchestrate CMD] [--json FILE] [--scale F]

Every peer runs every workload at concurrency C=4; a cell is the median wall time of
``--repeat`` runs of the *whole process* (interpreter start, loading the task definitions,
running them, exiting), measured around ``subprocess.run``. Within one repeat the peers take
turns, so machine noise spreads over all of them. The rows (``--only`` takes the keys):

- ``independent`` -- 1000 x ``true``, no dependencies.
- ``layered``     -- 500 x ``true`` in 10 layers of 50; each task of layer k>0 depends on
                     tasks i, i+1, i+2 (mod 50) of layer k-1.
- ``python``      -- 1000 python no-op calls in 10 layers of 100, the same 3 dependencies
                     (make: n/a -- it has no python actions).
- ``values``      -- the ``python`` row passing values: each call returns a small dict, and
                     each task after the first layer receives the results of its 3
                     dependencies as keyword arguments and checks them (doit: ``getargs``;
                     dask: ``delayed`` with the upstream results as arguments; orchestrate:
                     ``inputs``).
- ``sleep``       -- 40 x ``sleep 0.25``, no dependencies (ideal 40 x 0.25 / 4 = 2.5 s).
- ``startup``     -- ``orchestrate --help``, and one ``true`` task from start to exit for
                     every peer; median of ``--startup-repeat`` (5) runs.

Every run is checked to have done every task exactly once, without changing the workload;
a run that did not (or exited non-zero) stops the benchmark with exit status 1:

- make runs with ``--trace``: it names each target whose recipe it runs and echoes each
  recipe line; both are counted.
- doit prints ``.  NAME`` for each task it executes at its default verbosity; counted.
- the dask driver records the name of each call as it returns and prints them; counted.
- orchestrate: the ledger (``STATE/orchestration.db``) must hold one run, completed, whose
  every task is COMPLETED with ``attempts`` 1, and exactly one ``step_attempts`` row per task,
  COMPLETED; the exit status must be 0.

Settings, each the peer's best fair one for the workload:

- make (GNU make): ``make -j4 --trace`` on phony targets; the recipe line is the bare command,
  which make execs directly (no shell) since it has no shell metacharacters.
- doit 0.36: ``doit -n 4 -P thread`` for every row. Its process mode (the default for ``-n``)
  forks 4 workers and sends each task to them through multiprocessing queues (the task
  pickled with cloudpickle when needed); its thread mode runs the same dispatch loop with 4
  threads. The shell rows spend their time waiting on a child (``CmdAction`` runs the string
  through ``/bin/sh``, as orchestrate's shell tool does), which releases the GIL; the no-op
  python row has nothing to parallelise and only pays for dispatch, which is cheaper without
  queues to other processes. Both modes were timed here (2 cores, 3-5 runs each): for
  1000 x ``true`` and the layered ``true`` rows they were within the machine's noise of each
  other (medians 1.0-1.6 s and 0.6-0.9 s for both), for the python row threads took 0.19 s
  and processes 0.33-0.49 s; the ``dbm``, ``json`` and ``sqlite3`` backends were also within
  noise, so the default (``dbm``) stays. Tasks have no ``file_dep`` so doit always runs them;
  its dependency database is deleted before each run so every run starts clean.
- dask: ``dask.compute(..., scheduler="threads", num_workers=4)`` (the local threaded
  scheduler) from a small driver script run by the same interpreter. Shell rows call
  ``subprocess.run([...])`` (no shell), which releases the GIL while it waits; the python
  row calls the function in the worker thread. The process-pool scheduler (spawned workers,
  each re-importing the driver, every task pickled) took 1.0 s for the python row against
  0.4 s with threads, and nothing here needs more than one interpreter.
- orchestrate: ``orchestrate --state-dir STATE run PLAN -j 4 --quiet``, a fresh state
  directory per run. Its shell tool runs ``true`` directly (a plain command needs no shell, as
  with make); its python tool runs each callable in a warm worker process (isolation by
  design), where doit and dask call it in a thread of their own process.

Every peer runs with the same environment: this one, without ``ORCHESTRATE_DB_URL`` and
``PIPELINE_DB_PATH`` (they would move orchestrate's ledger away from its state directory) and
with bytecode caching on, into ``bench/.work/pycache`` (``PYTHONPYCACHEPREFIX``;
``PYTHONDONTWRITEBYTECODE`` removed). doit and dask are installed
by pip, which writes their bytecode at install time; orchestrate runs from this checkout, and
with ``PYTHONDONTWRITEBYTECODE=1`` in the environment (as on the machine these numbers were
first taken on) it would compile its ~85 modules from source on every start, ~0.08 s a
process that no installed orchestrate pays. Before timing, each peer runs the one-task
workload once, untimed, to fill that cache.

``--scale F`` multiplies task counts (layers stay 10; a layer keeps at least 3 tasks): it
exists so the test suite can run the harness on tiny workloads.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 4
PEERS = ("make", "doit", "dask", "orchestrate")
WORKSTREAM = "bench"
# Environment variables that would point orchestrate's ledger away from --state-dir.
LEDGER_ENV = ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")
# Every timed interpreter's bytecode cache (ignored by git; kept between invocations).
PYCACHE = ROOT / "bench" / ".work" / "pycache"


class NotExactlyOnce(Exception):
    """A run did not do every task exactly once (or failed)."""


# --------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Task:
    id: str
    deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    kind: str  # "true", "sleep", "python" or "values"
    tasks: tuple[Task, ...]
    peers: tuple[str, ...] = PEERS
    repeat: int | None = None  # None: --repeat

    @property
    def ids(self) -> list[str]:
        return [task.id for task in self.tasks]


def independent(count: int) -> tuple[Task, ...]:
    return tuple(Task(f"t{i:05d}") for i in range(count))


def layered(layers: int, width: int, deps: int = 3) -> tuple[Task, ...]:
    """``layers`` x ``width`` tasks; task i of layer k>0 depends on tasks i .. i+deps-1 (mod
    width) of layer k-1."""
    tasks = []
    for layer in range(layers):
        for i in range(width):
            before = () if layer == 0 else tuple(
                f"l{layer - 1:02d}t{(i + d) % width:04d}" for d in range(min(deps, width)))
            tasks.append(Task(f"l{layer:02d}t{i:04d}", tuple(sorted(set(before)))))
    return tuple(tasks)


def workloads(scale: float, startup_repeat: int) -> dict[str, list[Workload]]:
    """The rows, by ``--only`` key (``startup`` is two table rows)."""
    def n(count: int, least: int) -> int:
        return max(least, round(count * scale))

    every = PEERS
    return {
        "independent": [Workload("independent", f"{n(1000, 1)} × true, independent", "true",
                                 independent(n(1000, 1)), every)],
        "layered": [Workload("layered", f"{10 * n(50, 3)} × true, 10 layers × 3 deps", "true",
                             layered(10, n(50, 3)), every)],
        "python": [Workload("python", f"{10 * n(100, 3)} python no-op calls, 10 layers × 3 deps", "python",
                            layered(10, n(100, 3)), ("doit", "dask", "orchestrate"))],
        "values": [Workload("values", f"{10 * n(100, 3)} python calls passing values, 10 layers × 3 deps", "values",
                            layered(10, n(100, 3)), ("doit", "dask", "orchestrate"))],
        "sleep": [Workload("sleep", f"{n(40, 1)} × sleep 0.25, independent (ideal "
                           f"{-(-n(40, 1) // CONCURRENCY) * 0.25:.2f} s)", "sleep", independent(n(40, 1)), every)],
        "startup": [
            Workload("help", "`orchestrate --help`", "help", (), ("orchestrate",), startup_repeat),
            Workload("one", "1 × true, start to exit", "true", independent(1), every, startup_repeat),
        ],
    }


COMMANDS = {"true": ["true"], "sleep": ["sleep", "0.25"]}
NOOP_MODULE = """\
def noop():
    return None


def node(name, expect=(), **upstream):
    \"\"\"A call that passes values: checks it got each dependency's result as ``u0``, ``u1``, ...\"\"\"
    for index, dep in enumerate(expect):
        if upstream[f"u{index}"] != {"name": dep}:
            raise AssertionError(f"{name}: u{index} is {upstream.get(f'u{index}')!r}, expected the result of {dep}")
    return {"name": name}


def node_from_keys(name, expect=(), **upstream):
    \"\"\"``node`` for doit, whose getargs passes one key of a dependency's saved values.\"\"\"
    return node(name, expect, **{arg: {"name": value} for arg, value in upstream.items()})
"""

# --------------------------------------------------------------------------------------------
# Exactly once


def check_exactly_once(peer: str, ran: list[str], expected: list[str]) -> None:
    """Raise :class:`NotExactlyOnce` unless ``ran`` names every expected task exactly once."""
    counts: dict[str, int] = {}
    for name in ran:
        counts[name] = counts.get(name, 0) + 1
    wanted = set(expected)
    missing = sorted(wanted - counts.keys())
    twice = sorted(name for name, count in counts.items() if count > 1)
    unknown = sorted(counts.keys() - wanted)
    problems = []
    if missing:
        problems.append(f"{len(missing)} never ran (e.g. {', '.join(missing[:5])})")
    if twice:
        problems.append(f"{len(twice)} ran more than once (e.g. "
                        f"{', '.join(f'{name} x{counts[name]}' for name in twice[:5])})")
    if unknown:
        problems.append(f"{len(unknown)} not in the workload ran (e.g. {', '.join(unknown[:5])})")
    if problems:
        raise NotExactlyOnce(f"{peer}: {len(expected)} tasks expected, {len(ran)} runs seen: "
                             + "; ".join(problems))


MAKE_TRACE = re.compile(r"^\S+:\d+: (?:target '([^']+)' does not exist|update target '([^']+)' due to)")


def make_ran(stdout: str, workload: Workload) -> list[str]:
    """Targets whose recipe make ran, from ``--trace``; also checks the echoed recipe lines."""
    lines = stdout.splitlines()
    targets = [match.group(1) or match.group(2) for match in map(MAKE_TRACE.match, lines) if match]
    recipe = " ".join(COMMANDS[workload.kind])
    echoed = sum(line == recipe for line in lines)
    if echoed != len(targets):
        raise NotExactlyOnce(f"make: traced {len(targets)} targets but echoed {echoed} `{recipe}` lines")
    return targets


DOIT_RAN = re.compile(r"^\.  (\S+)$")


def doit_ran(stdout: str) -> list[str]:
    return [match.group(1) for match in map(DOIT_RAN.match, stdout.splitlines()) if match]


def dask_ran(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    names = [line[4:] for line in lines if line.startswith("ran ")]
    counted = [line for line in lines if line.startswith("calls ")]
    if counted != [f"calls {len(names)}"]:
        raise NotExactlyOnce(f"dask: the driver reported {counted or 'no count'} but listed {len(names)} calls")
    return names


def verify_ledger(db_path: Path, workload: Workload) -> None:
    """orchestrate did every task of ``workload`` exactly once, by its ledger."""
    if not db_path.exists():
        raise NotExactlyOnce(f"orchestrate: no ledger at {db_path}")
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        runs = db.execute("select run_id, status from runs").fetchall()
        tasks = db.execute("select task_key, state, attempts from tasks").fetchall()
        attempts = db.execute("select step_name, status from step_attempts").fetchall()
    if len(runs) != 1 or runs[0][1] != "completed":
        raise NotExactlyOnce(f"orchestrate: expected one completed run in the ledger, found {runs}")
    prefix = f"{WORKSTREAM}/"
    check_exactly_once("orchestrate (tasks table)", [key.removeprefix(prefix) for key, _, _ in tasks],
                       workload.ids)
    check_exactly_once("orchestrate (step_attempts)", [name.removeprefix(prefix) for name, _ in attempts],
                       workload.ids)
    wrong = [(key, state, count) for key, state, count in tasks if state != "COMPLETED" or count != 1]
    if wrong:
        raise NotExactlyOnce(f"orchestrate: {len(wrong)} tasks not COMPLETED in exactly one attempt "
                             f"(task, state, attempts), e.g. {wrong[:5]}")
    failed = [(name, status) for name, status in attempts if status != "COMPLETED"]
    if failed:
        raise NotExactlyOnce(f"orchestrate: {len(failed)} attempts not COMPLETED, e.g. {failed[:5]}")


# --------------------------------------------------------------------------------------------
# Writing each peer's input


def write_makefile(directory: Path, workload: Workload) -> Path:
    recipe = " ".join(COMMANDS[workload.kind])
    lines = [".PHONY: all " + " ".join(workload.ids), "all: " + " ".join(workload.ids)]
    lines += [f"{task.id}: {' '.join(task.deps)}".rstrip() + f"\n\t{recipe}" for task in workload.tasks]
    path = directory / "Makefile"
    path.write_text("\n".join(lines) + "\n")
    return path


DODO = '''\
import json
import pathlib

HERE = pathlib.Path(__file__).parent
GRAPH = json.loads((HERE / "graph.json").read_text())
if GRAPH["kind"] in ("python", "values"):
    import noop
    ACTIONS = [(noop.noop,)]
else:
    ACTIONS = [GRAPH["command"]]


def task_bench():
    for task in GRAPH["tasks"]:
        if GRAPH["kind"] == "values":
            # getargs: a key of the dict each dependency's action returned (doit saves it); the
            # whole dict would also carry doit's own bookkeeping of the task's received values.
            yield {"basename": task["id"],
                   "actions": [(noop.node_from_keys, [], {"name": task["id"], "expect": task["deps"]})],
                   "task_dep": task["deps"],
                   "getargs": {f"u{i}": (dep, "name") for i, dep in enumerate(task["deps"])}}
        else:
            yield {"basename": task["id"], "actions": ACTIONS, "task_dep": task["deps"]}
'''

DASK_DRIVER = '''\
import json
import pathlib
import subprocess
import sys

import dask

HERE = pathlib.Path(__file__).parent
GRAPH = json.loads((HERE / "graph.json").read_text())
ran = []  # list.append is atomic: the calls that returned, in order
if GRAPH["kind"] in ("python", "values"):
    import noop
    body = noop.noop
else:
    command = GRAPH["command"].split()

    def body():
        subprocess.run(command, check=True)


def call(name, *deps):
    body()
    ran.append(name)
    return name


def call_with_values(name, expect, *results):
    value = noop.node(name, expect, **{f"u{i}": result for i, result in enumerate(results)})
    ran.append(name)
    return value


nodes = {}
for task in GRAPH["tasks"]:
    if GRAPH["kind"] == "values":
        nodes[task["id"]] = dask.delayed(call_with_values, pure=False)(
            task["id"], task["deps"], *[nodes[dep] for dep in task["deps"]], dask_key_name=task["id"])
    else:
        nodes[task["id"]] = dask.delayed(call, pure=False)(
            task["id"], *[nodes[dep] for dep in task["deps"]], dask_key_name=task["id"])
dask.compute(*nodes.values(), scheduler="threads", num_workers=int(sys.argv[1]))
print("\\n".join("ran " + name for name in ran))
print("calls", len(ran))
'''


def write_inputs(directory: Path, workload: Workload) -> None:
    """Every peer's description of ``workload`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "noop.py").write_text(NOOP_MODULE)
    command = " ".join(COMMANDS.get(workload.kind, []))
    (directory / "graph.json").write_text(json.dumps({
        "kind": workload.kind, "command": command,
        "tasks": [{"id": task.id, "deps": list(task.deps)} for task in workload.tasks]}))
    (directory / "dodo.py").write_text(DODO)
    (directory / "dask_driver.py").write_text(DASK_DRIVER)
    if workload.kind not in ("python", "values") and workload.tasks:
        write_makefile(directory, workload)
    plan_tasks = []
    for task in workload.tasks:
        spec: dict = {"id": task.id}
        if workload.kind == "python":
            spec.update(tool="python", callable="noop:noop")
        elif workload.kind == "values":
            spec.update(tool="python", callable="noop:node", kwargs={"name": task.id, "expect": list(task.deps)},
                        inputs={f"u{i}": dep for i, dep in enumerate(task.deps)})
        else:
            spec.update(tool="shell", command=command)
        if task.deps:
            spec["depends_on"] = list(task.deps)
        plan_tasks.append(spec)
    (directory / "plan.json").write_text(json.dumps({"id": WORKSTREAM, "tasks": plan_tasks}))


# --------------------------------------------------------------------------------------------
# Running


def environment(pycache: Path) -> dict[str, str]:
    """The environment every timed process gets (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in (*LEDGER_ENV, "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    completed = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, env=env)
    return time.perf_counter() - started, completed


def _failed(peer: str, completed: subprocess.CompletedProcess) -> NotExactlyOnce:
    return NotExactlyOnce(f"{peer} exited {completed.returncode}: {shlex.join(completed.args)}\n"
                          f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}")


def run_peer(peer: str, workload: Workload, directory: Path, orchestrate: list[str], env: dict[str, str]) -> float:
    """One verified run of ``workload`` by ``peer``; its wall time in seconds."""
    if peer == "orchestrate":
        if workload.kind == "help":
            seconds, completed = timed([*orchestrate, "--help"], directory, env)
            if completed.returncode != 0 or "usage" not in completed.stdout.lower():
                raise _failed(peer, completed)
            return seconds
        state = directory / "state"
        shutil.rmtree(state, ignore_errors=True)
        seconds, completed = timed([*orchestrate, "--state-dir", str(state), "run", str(directory / "plan.json"),
                                    "-j", str(CONCURRENCY), "--quiet"], directory, env)
        if completed.returncode != 0:
            raise _failed(peer, completed)
        verify_ledger(state / "orchestration.db", workload)
        return seconds
    if peer == "make":
        seconds, completed = timed(["make", f"-j{CONCURRENCY}", "--trace", "-f", "Makefile"], directory, env)
        if completed.returncode != 0:
            raise _failed(peer, completed)
        check_exactly_once(peer, make_ran(completed.stdout, workload), workload.ids)
        return seconds
    if peer == "doit":
        for leftover in directory.glob(".doit.db*"):
            leftover.unlink()
        seconds, completed = timed([sys.executable, "-m", "doit", "-f", "dodo.py", "-n", str(CONCURRENCY),
                                    "-P", "thread"], directory, env)
        if completed.returncode != 0:
            raise _failed(peer, completed)
        check_exactly_once(peer, doit_ran(completed.stdout), workload.ids)
        return seconds
    if peer == "dask":
        seconds, completed = timed([sys.executable, "dask_driver.py", str(CONCURRENCY)], directory, env)
        if completed.returncode != 0:
            raise _failed(peer, completed)
        check_exactly_once(peer, dask_ran(completed.stdout), workload.ids)
        return seconds
    raise ValueError(peer)


@dataclass
class Result:
    workload: Workload
    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, peer: str) -> float | None:
        return statistics.median(self.times[peer]) if self.times.get(peer) else None


def bench(workload: Workload, peers: list[str], repeat: int, orchestrate: list[str], work: Path,
          env: dict[str, str]) -> Result:
    directory = work / workload.key
    write_inputs(directory, workload)
    result = Result(workload)
    chosen = [peer for peer in peers if peer in workload.peers]
    for _ in range(workload.repeat or repeat):
        for peer in chosen:  # peers take turns, so noise spreads over all of them
            result.times.setdefault(peer, []).append(run_peer(peer, workload, directory, orchestrate, env))
    return result


def warm_up(peers: list[str], orchestrate: list[str], work: Path, env: dict[str, str]) -> None:
    """One untimed, verified one-task run per peer: fills the bytecode cache (and the OS's)."""
    workload = Workload("warm-up", "warm-up", "true", independent(1))
    directory = work / workload.key
    write_inputs(directory, workload)
    for peer in peers:
        run_peer(peer, workload, directory, orchestrate, env)


# --------------------------------------------------------------------------------------------
# Reporting


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def make_version() -> str:
    try:
        first = subprocess.run(["make", "--version"], check=False, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "make"
    return first.replace("GNU Make", "make")


def table(results: list[Result], peers: list[str]) -> str:
    names = {"make": make_version(), "doit": f"doit {version('doit')}", "dask": f"dask {version('dask')}",
             "orchestrate": "orchestrate"}
    others = [peer for peer in peers if peer != "orchestrate"]
    header = ["workload (C=4)", *(names[peer] for peer in peers)]
    if "orchestrate" in peers:
        header += [f"vs {peer}" for peer in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        cells = [result.workload.title]
        for peer in peers:
            median = result.median(peer)
            cells.append("n/a" if median is None else f"{median:.3f} s")
        if "orchestrate" in peers:
            ours = result.median("orchestrate")
            for peer in others:
                theirs = result.median(peer)
                cells.append("" if ours is None or theirs is None else f"{ours / theirs:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown (default 3)")
    parser.add_argument("--startup-repeat", type=int, default=5, help="runs per startup cell (default 5)")
    parser.add_argument("--only", nargs="+", metavar="ROW",
                        choices=["independent", "layered", "python", "values", "sleep", "startup"],
                        help="run only these rows: independent layered python values sleep startup")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS), help="default: all")
    parser.add_argument("--orchestrate", metavar="CMD",
                        help="the orchestrate command to time (default: this checkout's bin/orchestrate "
                             "run by this interpreter)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply task counts (for tests)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.startup_repeat < 1 or args.scale <= 0:
        parser.error("--repeat and --startup-repeat must be at least 1, --scale above 0")
    orchestrate = (shlex.split(args.orchestrate) if args.orchestrate
                   else [sys.executable, str(ROOT / "bin" / "orchestrate")])
    peers = [peer for peer in PEERS if peer in args.peers]
    missing = [peer for peer in peers if peer in ("doit", "dask") and version(peer) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} not installed: pip install -e '.[bench]' "
                     f"(or leave them out with --peers)")
    if "make" in peers and shutil.which("make") is None:
        parser.error("make not found (leave it out with --peers)")
    rows = workloads(args.scale, args.startup_repeat)
    chosen = [workload for key, group in rows.items() if not args.only or key in args.only for workload in group]

    started = datetime.datetime.now(datetime.UTC)
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    print(f"peers: {', '.join(peers)} at C={CONCURRENCY}, median of {args.repeat} "
          f"(startup: {args.startup_repeat}); {machine}; {started:%Y-%m-%d %H:%M} UTC", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="orchestrate-peers-") as tmp:
        env = environment(PYCACHE)
        try:
            warm_up(peers, orchestrate, Path(tmp), env)
        except NotExactlyOnce as problem:
            print(f"\nwarm-up: a run failed its check -- {problem}", file=sys.stderr)
            return 1
        for workload in chosen:
            try:
                result = bench(workload, peers, args.repeat, orchestrate, Path(tmp), env)
            except NotExactlyOnce as problem:
                print(f"\n{workload.title}: a run failed its check -- {problem}", file=sys.stderr)
                return 1
            results.append(result)
            print(f"  {workload.title}: " + ", ".join(
                f"{peer} {result.median(peer):.3f} s" for peer in peers if result.times.get(peer)), flush=True)
    print()
    print(table(results, peers))
    if args.json:
        args.json.write_text(json.dumps({
            "date": started.isoformat(timespec="seconds"), "machine": machine, "concurrency": CONCURRENCY,
            "repeat": args.repeat, "startup_repeat": args.startup_repeat, "scale": args.scale,
            "orchestrate": orchestrate,
            "versions": {"make": make_version(), "doit": version("doit"), "dask": version("dask")},
            "rows": [{"row": result.workload.key, "title": result.workload.title,
                      "tasks": len(result.workload.tasks), "times_s": result.times,
                      "median_s": {peer: result.median(peer) for peer in result.times}} for result in results],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
