"""Adapters with injected faults, loaded by the runtime through router_config.json
(``"type": "custom", "class": "tests.fault_adapters:..."``)."""

from __future__ import annotations

import itertools
import os
from dataclasses import replace

from adapters.process import ProcessSpec
from adapters.tools import ShellAdapter
from domain.plan import TaskSpec

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
    """A shell tool that is down (its executable is missing, so nothing can start) while the
    file named by ``settings["broken_while"]`` exists: a tool outage the test can end."""

    def __init__(self, settings: dict) -> None:
        self.sentinel = settings["broken_while"]
        self.shell = ShellAdapter()

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec:
        spec = self.shell.process_spec(task, log_path)
        if os.path.exists(self.sentinel):
            return replace(spec, argv=("/nonexistent/tool-unavailable", *spec.argv[1:]))
        return spec
