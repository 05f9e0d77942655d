"""The parts of a mission workflow that templates build from: steps, typed params, limits
and the errors of mission planning. :mod:`planning.missions` plans with them and
:mod:`planning.mission_templates` fills them in; neither imports the other's internals."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from planning.schemas import describe_value

MAX_STEPS = 5
MAX_HUMAN_STEPS = 2
# A count param above this is refused outright rather than planned and truncated: at most
# MAX_STEPS steps survive anyway, and a huge count would only build a huge list to drop.
MAX_REQUESTED_COUNT = 50

Scalar = str | int | float | bool | None


class AntiFailurePlanningError(ValueError):
    """A mission cannot be planned within the execution envelope (or is malformed)."""


class UnknownMissionType(AntiFailurePlanningError):
    def __init__(self, mission_type: str, supported: Iterable[str]) -> None:
        self.mission_type = mission_type
        self.supported = tuple(sorted(supported))
        super().__init__(
            f"unknown mission type {mission_type!r}; supported types: {', '.join(self.supported)}"
        )


class MissionParamError(AntiFailurePlanningError):
    """A param is missing, of the wrong type or out of range; ``param`` names it."""

    def __init__(self, mission_type: str, param: str, message: str) -> None:
        self.mission_type = mission_type
        self.param = param
        super().__init__(f"mission {mission_type!r}: param {param!r} {message}")


class StepLimitExceeded(AntiFailurePlanningError):
    """``strict: true`` and the template's request exceeds the step or human-step limit."""

    def __init__(self, mission_type: str, requested: int, human: int, dropped: Sequence[str]):
        self.mission_type = mission_type
        self.requested = requested
        self.human = human
        self.dropped = tuple(dropped)
        super().__init__(
            f"mission {mission_type!r} asks for {requested} steps ({human} human); the limits are "
            f"{MAX_STEPS} steps and {MAX_HUMAN_STEPS} human steps, and strict mode refuses to "
            f"truncate (would drop: {', '.join(self.dropped)})"
        )


class EnvelopeViolation(AntiFailurePlanningError):
    """A workflow is outside the execution envelope; ``problems`` lists every reason."""

    def __init__(self, workflow_id: str, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        super().__init__(
            f"workflow {workflow_id!r} violates the execution envelope "
            f"({count} problem{'s' if count != 1 else ''}): " + "; ".join(self.problems)
        )


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    """One step. ``runtime``: a shell ``command`` or a ``callable`` (``module:function``) with
    ``args``, run in ``cwd``. ``human``: a ``prompt`` to approve or reject. Lists given for
    ``depends_on``, ``args`` or ``acceptance`` are stored as tuples; nothing else is checked
    here, so a workflow outside the envelope can be described (and refused by
    :func:`validate_envelope`)."""

    id: str
    kind: str
    title: str = ""
    command: str | None = None
    callable: str | None = None
    args: tuple[Scalar, ...] = ()
    prompt: str | None = None
    depends_on: tuple[str, ...] = ()
    cwd: str | None = None
    timeout_s: float | None = None
    acceptance: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("args", "depends_on", "acceptance"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.timeout_s, int) and not isinstance(self.timeout_s, bool):
            object.__setattr__(self, "timeout_s", float(self.timeout_s))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "command": self.command,
            "callable": self.callable,
            "args": list(self.args),
            "prompt": self.prompt,
            "depends_on": list(self.depends_on),
            "cwd": self.cwd,
            "timeout_s": self.timeout_s,
            "acceptance": list(self.acceptance),
        }


class TemplateParams:
    """Typed, read-only access to a mission's params for one template.

    Each accessor validates the value (``None`` or absent means the default) and raises
    :class:`MissionParamError` naming the param. Reads are remembered: params no accessor read
    are "ignored" (listed in metadata; refused in strict mode), so a template must read every
    param it supports, unconditionally.
    """

    def __init__(self, mission_type: str, params: Mapping[str, Scalar]) -> None:
        self.mission_type = mission_type
        self._values = dict(params)
        self._read: set[str] = set()

    def _get(self, key: str) -> Scalar:
        self._read.add(key)
        return self._values.get(key)

    def error(self, key: str, message: str) -> MissionParamError:
        return MissionParamError(self.mission_type, key, message)

    def text(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {describe_value(value)}")
        return value

    def path(self, key: str, default: str | None = None, *, what: str = "a path") -> str:
        """A non-empty path without NUL; required when ``default`` is None."""
        value = self._get(key)
        if value is None:
            if default is None:
                raise self.error(key, f"is required: {what}")
            return default
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.error(
                key, f"must be {what} (a non-empty string), got {describe_value(value)}"
            )
        return value

    def count(self, key: str, default: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {describe_value(value)}")
        return self._bounded(key, value)

    def count_or_flag(self, key: str, default: int) -> int:
        """A count that also accepts ``true`` (1) and ``false`` (0)."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return int(value)
        if not isinstance(value, int):
            raise self.error(
                key, f"must be true, false or a whole number, got {describe_value(value)}"
            )
        return self._bounded(key, value)

    def _bounded(self, key: str, value: int) -> int:
        if not 0 <= value <= MAX_REQUESTED_COUNT:
            raise self.error(key, f"must be from 0 to {MAX_REQUESTED_COUNT}, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {describe_value(value)}")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            raise self.error(
                key, f"must be one of {', '.join(sorted(choices))}, got {describe_value(value)}"
            )
        return value

    def seconds(self, key: str, default: float | None) -> float | None:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(key, f"must be a number of seconds > 0, got {describe_value(value)}")
        return float(value)

    def unread(self) -> tuple[str, ...]:
        return tuple(sorted(set(self._values) - self._read))


TemplateFn = Callable[[TemplateParams], Sequence[WorkflowStep]]
