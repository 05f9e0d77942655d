"""Adapters with injected faults, loaded by the runtime through router_config.json
(``"type": "custom", "class": "tests.fault_adapters:..."``)."""

from __future__ import annotations

import itertools
import shlex

from adapters.process import ProcessSpec
from adapters.tools import ShellAdapter
from planning.model import TaskSpec

# Process-wide, so the count survives the executor actor being restarted.
_calls = itertools.count(1)


class EveryThirdCallRaises:
    """A shell adapter whose own code raises on every third task it is given."""

    def __init__(self, settings: dict) -> None:
        self.shell = ShellAdapter()

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec:
        call = next(_calls)
        if call % 3 == 0:
            raise RuntimeError(f"injected adapter fault on call {call}")
        return self.shell.process_spec(task, log_path)


class AlwaysRaises:
    """A tool adapter whose code raises on every task."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec:
        raise RuntimeError("injected adapter fault: this tool is broken")


class SwitchableShell:
    """A shell tool that is broken (exits 1 before running the command) while the file named
    by ``settings["broken_while"]`` exists: a tool outage the test can end."""

    def __init__(self, settings: dict) -> None:
        self.sentinel = settings["broken_while"]
        self.shell = ShellAdapter()

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec:
        spec = self.shell.process_spec(task, log_path)
        guard = f"if [ -e {shlex.quote(self.sentinel)} ]; then echo 'tool unavailable' >&2; exit 1; fi; "
        return ProcessSpec(
            argv=(spec.argv[0], "-c", guard + (task.command or "")),
            cwd=spec.cwd,
            env=spec.env,
            log_path=spec.log_path,
            timeout_s=spec.timeout_s,
            memory_limit_mb=spec.memory_limit_mb,
        )
