"""The Jinja2 environment of the report and the dashboard: templates from the package's
``templates`` directory, HTML autoescaped (a task's output can hold any markup)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("views", "templates"),
        autoescape=select_autoescape(("html", "j2", "svg")),
        undefined=StrictUndefined,  # a misspelt field fails the tests instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
