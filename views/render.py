"""The Jinja2 environment of the report and the dashboard: templates from the package's
``templates`` directory, HTML autoescaped (a task's output can hold any markup)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from domain.shown import css_name


@cache
def environment() -> Environment:
    """The templates' environment; its filter ``css`` turns a shown task state into a class
    suffix (``FAILED (allowed)`` -> ``FAILED-allowed``)."""
    env = Environment(
        loader=PackageLoader("views", "templates"),
        autoescape=select_autoescape(("html", "j2", "svg")),
        undefined=StrictUndefined,  # a misspelt field fails the tests instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["css"] = css_name
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
