"""Running git for orchestrate's worktrees and merges, the same way every time.

Every git call runs with an explicit argv (never a shell), ``GIT_TERMINAL_PROMPT=0``,
``LC_ALL=C``, stdin closed, and without the repository-locating variables (``GIT_DIR``,
``GIT_INDEX_FILE``…) a parent git might have set. Commits are made with the repository's own
identity (``user.name``/``user.email`` as git config gives them there), or the author named by
``ORCHESTRATE_GIT_AUTHOR`` (``Name <email>``), falling back to ``orchestrate
<orchestrate@localhost>`` only where no identity is configured; never signed and never running
hooks, so they work on any machine. A failing git command raises :class:`GitError`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FALLBACK_IDENTITY = ("orchestrate", "orchestrate@localhost")
AUTHOR_ENV = "ORCHESTRATE_GIT_AUTHOR"
# Commits are plumbing: never signed (a signing prompt would hang or fail headless).
NO_SIGNING = ("-c", "commit.gpgSign=false")
# Diff output that `git apply` understands whatever the user's diff.* configuration says.
DIFF_OPTIONS = (
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--find-renames",
    "--src-prefix=a/",
    "--dst-prefix=b/",
    "--no-relative",
)
TIMEOUT_S = 300.0
# Variables that make git look somewhere other than `-C <dir>` (as `git rev-parse --local-env-vars`).
_LOCAL_ENV_VARS = frozenset(
    {
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_OBJECT_DIRECTORY",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_GRAFT_FILE",
        "GIT_INDEX_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_REPLACE_REF_BASE",
        "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX",
        "GIT_SHALLOW_FILE",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
    }
)



class WorktreeError(Exception):
    """Base class of everything the git adapters (worktrees, merges) raise on purpose."""


class GitError(WorktreeError):
    """A git command failed. ``argv`` is exactly what ran; ``returncode`` is None on a timeout."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str | bytes) -> None:
        if isinstance(stderr, bytes):
            stderr = stderr.decode("utf-8", "replace")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        status = "timed out" if returncode is None else f"exit code {returncode}"
        detail = f": {self.stderr}" if self.stderr else ""
        super().__init__(f"{shlex.join(self.argv)} failed ({status}){detail}")



def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_ENV_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


def git(
    cwd: Path,
    *args: str,
    ok: Iterable[int] = (0,),
    config: Sequence[str] = (),
    timeout: float = TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git -C cwd [config] args``; raise GitError unless the exit code is in ``ok``."""
    argv = ["git", *config, "-C", str(cwd), *args]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_environment(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GitError(argv, None, exc.stderr or f"no answer within {timeout:g} s") from None
    except FileNotFoundError:
        raise GitError(argv, 127, "the git executable was not found on PATH") from None
    if done.returncode not in tuple(ok):
        raise GitError(argv, done.returncode, done.stderr)
    return done


def git_out(cwd: Path, *args: str, **kwargs: Any) -> str:
    return git(cwd, *args, **kwargs).stdout.decode("utf-8", "surrogateescape").strip()


def resolve_commit(repo: Path, rev: str) -> str:
    return git_out(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")


def try_resolve(repo: Path, ref: str) -> str | None:
    done = git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", ok=(0, 1))
    return done.stdout.decode().strip() if done.returncode == 0 else None


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    return git(repo, "merge-base", "--is-ancestor", ancestor, descendant, ok=(0, 1)).returncode == 0


def branch_ref(name: str) -> str:
    return name if name.startswith("refs/") else f"refs/heads/{name}"



def commit_identity(repo: Path, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(name, email)`` commits in ``repo`` are made as: ``ORCHESTRATE_GIT_AUTHOR``
    (``Name <email>``) when set, else the repository's configured ``user.name`` and
    ``user.email`` (its own config, the user's global one, the system's: as git reads them),
    else :data:`FALLBACK_IDENTITY` for whatever is missing. Raises WorktreeError for a malformed
    ``ORCHESTRATE_GIT_AUTHOR``."""
    configured = (os.environ if env is None else env).get(AUTHOR_ENV, "").strip()
    if configured:
        name, _, rest = configured.partition("<")
        email = rest.rstrip().removesuffix(">")
        if not name.strip() or not email.strip() or not rest.rstrip().endswith(">") or "<" in email:
            raise WorktreeError(f"{AUTHOR_ENV}={configured!r}: expected 'Name <email>'")
        return name.strip(), email.strip()

    def config(key: str) -> str:
        return git(repo, "config", "--get", key, ok=(0, 1)).stdout.decode("utf-8", "replace").strip()

    return config("user.name") or FALLBACK_IDENTITY[0], config("user.email") or FALLBACK_IDENTITY[1]


def commit_config(repo: Path) -> tuple[str, ...]:
    name, email = commit_identity(repo)
    return ("-c", f"user.name={name}", "-c", f"user.email={email}", *NO_SIGNING)


def with_trailers(message: str, trailers: Sequence[tuple[str, str]]) -> str:
    """``message`` with git trailers (``Key: value`` lines after a blank line)."""
    if not trailers:
        return message
    return f"{message.rstrip()}\n\n" + "\n".join(f"{key}: {value}" for key, value in trailers) + "\n"

