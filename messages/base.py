"""The base of every actor message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Message:
    """Marker base: a frozen value with a schema version per concrete type."""

    VERSION: ClassVar[int] = 1
