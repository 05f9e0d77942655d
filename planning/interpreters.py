"""Which python interpreter a task's python code, gates and tools run with.

A plan names it with ``python`` (on the task, its workstream or the bundle; the nearest wins):
an interpreter's path or a virtualenv directory, relative to the plan file. Without one, the
task uses its project's virtualenv — a ``.venv`` in the workstream's ``repo`` (else the task's
``cwd``) or in a directory above it, up to the enclosing git repository's root; else one found
the same way from the plan file's directory (a plan kept in its project, driving a repository
it creates or keeps elsewhere) — and failing that the ``python3`` on ``PATH``. Never orchestrate's own interpreter unless one of those is it,
so a project's dependencies, pytest and ruff are the project's.

Paths are kept as found (not resolved through symlinks): a virtualenv's ``bin/python`` is a
link to the base interpreter, and only called by its own path does it use the virtualenv.
"""

from __future__ import annotations

import os
import shutil
import sys

#: The directory a project's virtualenv is looked for under.
PROJECT_VENV = ".venv"


class Interpreters:
    """Resolves ``python`` values and defaults for one plan load (answers cached per load, so
    a 100,000-task plan looks at the disk once per directory, and a later load sees a
    virtualenv created meanwhile)."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self._named: dict[str, tuple[str, str]] = {}
        self._defaults: dict[str, str] = {}
        self._by_cwd: dict[str, str] = {}

    def named(self, value: str) -> tuple[str, str]:
        """``(interpreter, "")`` for a ``python`` value as written, or ``("", problem)``."""
        if value not in self._named:
            self._named[value] = _named(value, self.base_dir)
        return self._named[value]

    def default_for_cwd(self, cwd: str) -> str:
        """:meth:`default` for a task's ``cwd`` as written (relative to the plan's directory);
        cached as written, so most tasks of a plan cost one lookup."""
        if cwd not in self._by_cwd:
            self._by_cwd[cwd] = self.default(os.path.abspath(os.path.join(self.base_dir, cwd)))
        return self._by_cwd[cwd]

    def default(self, project: str) -> str:
        """The interpreter of a task whose project directory is ``project`` (see the module)."""
        if project not in self._defaults:
            self._defaults[project] = (_project_venv(project) or _project_venv(self.base_dir)
                                       or shutil.which("python3") or sys.executable)
        return self._defaults[project]


def _named(value: str, base_dir: str) -> tuple[str, str]:
    path = os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))
    if os.path.isdir(path):
        for name in ("python", "python3"):
            candidate = os.path.join(path, "bin", name)
            if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
                return candidate, ""
        return "", (f"{path} is a directory without bin/python, so not a virtualenv "
                    f"(make one with: python3 -m venv {path})")
    if not os.path.exists(path):
        return "", f"no interpreter or virtualenv at {path}"
    if not os.access(path, os.X_OK):
        return "", f"{path} is not executable; expected a python interpreter or a virtualenv directory"
    name = os.path.basename(path).lower()
    if "python" not in name and "pypy" not in name:
        # A gate run as `<it> -m pytest` would "pass" with /bin/true; say so instead.
        return "", (f"{path} does not look like a python interpreter (no 'python' or 'pypy' in its "
                    f"name); name the interpreter (e.g. .venv/bin/python) or the virtualenv directory")
    return path, ""


def _project_venv(project: str) -> str | None:
    """``<dir>/.venv/bin/python`` of ``project`` or the nearest directory above it, searching
    no higher than the first directory that is a git repository's root."""
    directory = os.path.abspath(project)
    while True:
        candidate = os.path.join(directory, PROJECT_VENV, "bin", "python")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory or os.path.exists(os.path.join(directory, ".git")):
            return None
        directory = parent


def venv_bin(interpreter: str) -> str | None:
    """The ``bin`` directory of the virtualenv ``interpreter`` belongs to, or None when it is
    not a virtualenv's (a system ``python3``)."""
    directory = os.path.dirname(interpreter)
    if os.path.isfile(os.path.join(os.path.dirname(directory), "pyvenv.cfg")):
        return directory
    return None
