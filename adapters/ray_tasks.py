"""How a task becomes a Ray submission: the spec its node runs and the Ray options it asks for.

Pure functions of the task and the adapter's settings (no Ray import, no I/O but reading
pycall's source once), tested directly. The spec is what :func:`adapters.ray_remote.run_attempt`
takes; the options are ``ray.remote(...).options(**options)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.plan import Resources, TaskSpec
from domain.results import ResultRef, inputs_wire
from domain.routing import AdapterInfo

RAY_TOOLS = ("shell", "python")
# What a task's process tree gets between SIGTERM and SIGKILL (as local tasks).
KILL_GRACE_S = 2.0
_PYCALL = Path(__file__).with_name("pycall.py")


@dataclass(frozen=True, slots=True)
class RaySettings:
    """A ``ray`` adapter's settings: the cluster ``address`` (``host:port`` of its head),
    ``resources`` every task asks for unless it says otherwise, Ray's ``runtime_env``."""

    address: str
    resources: Resources = Resources()
    runtime_env: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, info: AdapterInfo) -> RaySettings:
        """From a configured adapter (its settings were checked against the schema)."""
        settings = dict(info.settings)
        return cls(
            address=str(settings["address"]),
            resources=Resources.from_json(dict(settings.get("resources") or {})),
            runtime_env=dict(settings.get("runtime_env") or {}),
        )


def ray_options(task: TaskSpec, defaults: Resources) -> dict[str, Any]:
    """Ray's task options for ``task``: each of its ``resources`` given wins over the adapter's
    default; ``memory_mb`` becomes Ray's ``memory`` in bytes; ``custom`` entries are merged
    (the task's amount wins for a name both give)."""
    asked = task.resources or Resources()

    def pick(name: str) -> float | None:
        mine = getattr(asked, name)
        return mine if mine is not None else getattr(defaults, name)

    options: dict[str, Any] = {}
    if (cpus := pick("num_cpus")) is not None:
        options["num_cpus"] = cpus
    if (gpus := pick("num_gpus")) is not None:
        options["num_gpus"] = gpus
    if (memory := pick("memory_mb")) is not None:
        options["memory"] = int(memory * 1024 * 1024)
    custom = {**dict(defaults.custom), **dict(asked.custom)}
    if custom:
        options["resources"] = custom
    return options


@functools.cache
def _pycall_source() -> str:
    return _PYCALL.read_text(encoding="utf-8")


def remote_spec(task: TaskSpec, markers: tuple[tuple[str, str], ...],
                inputs: tuple[tuple[str, ResultRef], ...] = ()) -> dict[str, Any]:
    """What the node runs for ``task`` (see :func:`adapters.ray_remote.run_attempt`): its
    command or callable, cwd, the task's own environment plus the attempt ``markers`` (not the
    runtime's environment: the node has its own), timeout and memory limit, its interpreter
    (``python``: the plan's, None for a step orchestrate built, which the node runs with its own)
    and the upstream results it takes (``inputs``, as ``[[name, json text | None, path | None]]``:
    a large result is still a path on this machine here; the bridge sends its content). Raises
    ValueError for a tool a Ray node cannot run."""
    if task.tool not in RAY_TOOLS:
        raise ValueError(f"a ray adapter runs {' and '.join(RAY_TOOLS)} tasks, not {task.tool!r}")
    spec: dict[str, Any] = {
        "kind": task.tool,
        "task": task.key,
        "cwd": task.cwd or ".",
        "env": [list(pair) for pair in (*task.env, *markers)],
        "timeout_s": task.timeout_s,
        "memory_limit_mb": task.memory_limit_mb,
        "grace_s": KILL_GRACE_S,
        "python": task.python,
        "inputs": inputs_wire(inputs),
    }
    if task.tool == "python":
        spec.update(callable=task.callable or "", args=list(task.args), kwargs=dict(task.kwargs),
                    pycall_source=_pycall_source())
    else:
        spec["command"] = task.command or ""
    return spec
