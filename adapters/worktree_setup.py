"""Making a new worktree ready to work in: files copied from the repository, directories linked
to the repository's, a record that its set-up commands ran, and a check that ports are free.

A fresh ``git worktree add`` has only tracked files: no ``.env`` (git-ignored, by design), no
``.venv`` or ``node_modules``. A workstream names what to carry over (``copy``: paths or globs,
relative to the repository, copied with their mode), what to share (``link``: symlinked to the
repository's copy, e.g. a virtualenv too big to copy) and commands to run once (``setup``).

Nothing here reads or prints a copied file's content: only paths are ever reported, so a secret
copied in never reaches a log, an event or the ledger. The paths copied and linked are the
worktree's *private* paths (:attr:`adapters.worktrees.Worktree.private`), kept out of every
patch and commit. Synchronous file and git work, no threads.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from domain.ports import PortBlock

#: Written into the worktree's git admin directory once its set-up commands all succeeded; a
#: worktree made again (its directory was deleted) has a new admin directory, so it is set up
#: again.
SETUP_MARKER = "orchestrate-setup-done"


class SetupError(Exception):
    """The worktree could not be prepared; the message says what and what to do."""


@dataclass(frozen=True, slots=True)
class Carried:
    """What was brought into a worktree: ``copied`` and ``linked`` paths (relative, sorted) and
    the ``copy`` patterns that matched nothing in the repository."""

    copied: tuple[str, ...] = ()
    linked: tuple[str, ...] = ()
    unmatched: tuple[str, ...] = ()

    @property
    def private(self) -> tuple[str, ...]:
        return tuple(sorted({*self.copied, *self.linked}))


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing a path that is absolute or climbs out with ``..``."""
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise SetupError(f"{relative!r} must be a path inside the repository (no '..', not absolute)")
    return root / relative


def _matches(repo: Path, pattern: str) -> list[str]:
    """Files matched by ``pattern`` in ``repo`` (relative paths; directories expand to their
    files), hidden files included, ``.git`` never."""
    found: set[str] = set()
    for match in glob.glob(pattern, root_dir=repo, recursive=True, include_hidden=True):
        path = repo / match
        if ".git" in Path(match).parts:
            continue
        if path.is_dir() and not path.is_symlink():
            for walked, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d != ".git"]
                found.update(os.path.relpath(os.path.join(walked, f), repo) for f in files)
        elif path.exists() or path.is_symlink():
            found.add(os.path.normpath(match))
    return sorted(found)


def carry_into(repo: Path, worktree: Path, copy: Sequence[str], link: Sequence[str]) -> Carried:
    """Copy the files ``copy`` matches from ``repo`` into ``worktree`` (same relative paths,
    mode kept, existing files replaced) and symlink each ``link`` path to the repository's.

    A link whose source is missing, or whose place in the worktree is taken by a tracked file
    or directory, raises :class:`SetupError`; a copy pattern that matches nothing is reported
    in :attr:`Carried.unmatched` (the workstream may not need it everywhere)."""
    repo, worktree = Path(repo), Path(worktree)
    copied: list[str] = []
    unmatched: list[str] = []
    for pattern in copy:
        _inside(repo, pattern.split("*", 1)[0] or ".")
        matched = _matches(repo, pattern)
        if not matched:
            unmatched.append(pattern)
        for relative in matched:
            target = _inside(worktree, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_file():
                target.unlink()
            try:
                shutil.copy2(repo / relative, target, follow_symlinks=False)
            except OSError as error:
                raise SetupError(f"could not copy {relative!r} into the worktree: {error.strerror or error}") from None
            copied.append(relative)
    linked: list[str] = []
    for relative in link:
        source = _inside(repo, relative)
        if not source.exists():
            raise SetupError(f"link {relative!r}: {source} does not exist in the repository; create it "
                             "(or remove it from 'link')")
        target = _inside(worktree, relative)
        if target.is_symlink():
            if os.readlink(target) == str(source.resolve()):
                linked.append(os.path.normpath(relative))
                continue
            target.unlink()
        elif target.exists():
            raise SetupError(f"link {relative!r}: the worktree already has {relative} (tracked by git?); "
                             "only untracked directories can be linked")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source.resolve(), target)
        linked.append(os.path.normpath(relative))
    return Carried(tuple(sorted(set(copied))), tuple(sorted(linked)), tuple(unmatched))


def admin_dir(worktree: Path) -> Path:
    """The worktree's own git directory (``<repo>/.git/worktrees/<name>``)."""
    done = subprocess.run(["git", "-C", str(worktree), "rev-parse", "--absolute-git-dir"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)
    if done.returncode != 0:
        raise SetupError(f"{worktree} is not a git worktree: {done.stderr.strip()}")
    return Path(done.stdout.strip())


def setup_done(worktree: Path) -> bool:
    """True once :func:`mark_setup_done` was called for this incarnation of the worktree."""
    return (admin_dir(worktree) / SETUP_MARKER).exists()


def mark_setup_done(worktree: Path, commands: Iterable[str]) -> None:
    (admin_dir(worktree) / SETUP_MARKER).write_text("".join(f"{c}\n" for c in commands), encoding="utf-8")


def ports_free(block: PortBlock, host: str = "127.0.0.1") -> bool:
    """Whether every port of ``block`` can be bound on ``host`` now (TCP). Only a snapshot: a
    program may take one later; the block is the worktree's by agreement, not by holding."""
    for port in range(block.base, block.end):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True
