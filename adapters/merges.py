"""Merging a workstream's branch back into its target branch, and checking it stays merged.

``git merge-tree --write-tree`` + ``git commit-tree`` + a compare-and-swap ``git update-ref``,
so a conflict check never touches any working tree; a target checked out somewhere is brought
along. A conflicting merge can instead be left half-done in an *integration* worktree for an
agent to resolve. Synchronous git plumbing (see :mod:`adapters.git`), no threads, no database.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.git import (
    GitError,
    WorktreeError,
    branch_ref,
    commit_config,
    git,
    git_out,
    is_ancestor,
    resolve_commit,
    try_resolve,
)
from adapters.worktrees import list_worktrees


class TargetDirty(GitError):
    """The merge target is checked out in a worktree that cannot be updated with the merge
    (staged changes, or local edits / untracked files where the merge changes files).
    Nothing was changed: the target branch still points where it did. Its text is the reason
    for a person (the git command stays in ``argv``)."""

    def __str__(self) -> str:
        return self.stderr



class MergeConflict(WorktreeError):
    """The branch does not merge cleanly into the target; nothing was changed."""

    def __init__(self, target: str, branch: str, conflicts: Sequence[str], messages: str = "") -> None:
        self.target = target
        self.branch = branch
        self.conflicts = tuple(conflicts)
        self.messages = messages
        listed = ", ".join(self.conflicts) or "(see messages)"
        super().__init__(f"merging {branch} into {target} conflicts in: {listed}")


@dataclass(frozen=True, slots=True)
class MergeCheck:
    """Result of a trial merge of ``branch`` into ``target`` (no working tree touched).

    ``clean`` — it merges without conflicts; ``tree`` is then the merged tree's sha (None when
    not clean). ``conflicts`` are the conflicting paths (sorted, unique). ``target_commit`` and
    ``branch_commit`` are the exact commits that were merged; ``messages`` is git's text."""

    clean: bool
    tree: str | None
    conflicts: tuple[str, ...]
    target_commit: str = ""
    branch_commit: str = ""
    messages: str = ""



def merge_check(repo: Path, target_branch: str, branch: str) -> MergeCheck:
    """Trial-merge ``branch`` into ``target_branch`` with ``git merge-tree --write-tree``:
    only objects are written, no ref, index or working tree changes."""
    repo = Path(repo)
    target_commit = resolve_commit(repo, branch_ref(target_branch))
    branch_commit = resolve_commit(repo, branch_ref(branch))
    return _merge_tree(repo, target_commit, branch_commit)


def _merge_tree(repo: Path, target_commit: str, branch_commit: str) -> MergeCheck:
    done = git(
        repo,
        "merge-tree",
        "--write-tree",
        "--name-only",
        "--messages",
        "-z",
        target_commit,
        branch_commit,
        ok=(0, 1),
    )
    tree, conflicts, messages = _parse_merge_tree(done.stdout)
    clean = done.returncode == 0
    return MergeCheck(
        clean=clean,
        tree=tree if clean else None,
        conflicts=() if clean else conflicts,
        target_commit=target_commit,
        branch_commit=branch_commit,
        messages=messages,
    )


def _parse_merge_tree(raw: bytes) -> tuple[str, tuple[str, ...], str]:
    """``merge-tree --write-tree --name-only --messages -z`` output:
    ``<tree>\\0`` ``(<path>\\0)*`` ``\\0`` then messages, each
    ``<n>\\0<path>\\0…(n paths)<type>\\0<text>\\0``."""
    tokens = raw.split(b"\0")
    tree = tokens[0].decode("ascii").strip()
    i = 1
    paths: list[str] = []
    while i < len(tokens) and tokens[i]:
        paths.append(os.fsdecode(tokens[i]))
        i += 1
    i += 1  # the empty token that ends the conflicted-file section
    texts: list[str] = []
    conflict_paths: list[str] = []
    while i < len(tokens) and tokens[i]:
        try:
            count = int(tokens[i])
        except ValueError:  # not the documented layout: keep the rest verbatim
            texts.append(b"\n".join(tokens[i:]).decode("utf-8", "replace"))
            break
        message_paths = [os.fsdecode(p) for p in tokens[i + 1 : i + 1 + count]]
        kind = tokens[i + 1 + count].decode("utf-8", "replace") if i + 1 + count < len(tokens) else ""
        text = tokens[i + 2 + count].decode("utf-8", "replace") if i + 2 + count < len(tokens) else ""
        texts.append(text.rstrip("\n"))
        if kind.startswith("CONFLICT"):
            conflict_paths.extend(message_paths)
        i += count + 3
    # Conflicts git reports without a conflicted stage (e.g. directory rename splits) are only
    # in the messages: count them too.
    conflicts = tuple(sorted(set(paths) or set(conflict_paths)))
    return tree, conflicts, "\n".join(texts)


def merge_into(repo: Path, target_branch: str, branch: str, message: str) -> str:
    """Merge ``branch`` into ``target_branch`` and return the new tip of ``target_branch``.

    Only when clean: otherwise raise :class:`MergeConflict` and change nothing. The merge commit
    (parents: target, branch) is made from the merge-tree result and the target ref is moved with
    a compare-and-swap, so a target that moved meanwhile fails (GitError) instead of losing
    work. If ``branch`` is already contained in the target, nothing is done and the current tip
    is returned. ``branch`` itself is never moved.

    If ``target_branch`` is checked out in a worktree (typically the main one), that worktree's
    index and files are brought along (``git read-tree -m -u``); this needs its index to have
    no staged changes and no local edits or untracked files in the paths the merge changes —
    otherwise :class:`TargetDirty` is raised before anything is changed. Edits to other files
    are kept.
    """
    repo = Path(repo)
    target_ref = branch_ref(target_branch)
    old = resolve_commit(repo, target_ref)
    theirs = resolve_commit(repo, branch_ref(branch))
    if is_ancestor(repo, theirs, old):
        return old
    check = _merge_tree(repo, old, theirs)
    if not check.clean or check.tree is None:
        raise MergeConflict(target_branch, branch, check.conflicts, check.messages)
    new = git_out(repo, "commit-tree", check.tree, "-p", old, "-p", theirs, "-m", message, config=commit_config(repo))
    return _advance_target(repo, target_branch, branch, old, new)


def _advance_target(repo: Path, target_branch: str, branch: str, old: str, new: str) -> str:
    """Move ``target_branch`` from ``old`` to the merge commit ``new`` (compare-and-swap),
    bringing along the worktree it is checked out in, if any (see :func:`merge_into`)."""
    target_ref = branch_ref(target_branch)
    checkout = next(
        (e for e in list_worktrees(repo) if e.branch == target_ref and not e.bare and e.prunable is None),
        None,
    )
    if checkout is None:
        git(repo, "update-ref", "-m", f"orchestrate: merge {branch}", target_ref, new, old)
        return new

    where = checkout.path
    git(where, "update-index", "-q", "--refresh", ok=(0, 1))
    staged = git(where, "diff-index", "--cached", "--quiet", "HEAD", "--", ok=(0, 1))
    if staged.returncode != 0:
        raise TargetDirty(
            ("git", "-C", str(where), "diff-index", "--cached", "--quiet", "HEAD"),
            1,
            f"{target_branch} is checked out in {where} with staged changes; not merging {branch}",
        )
    trial = git(where, "read-tree", "-m", "-u", "-n", old, new, ok=(0, 128))
    if trial.returncode != 0:
        raise TargetDirty(
            ("git", "-C", str(where), "read-tree", "-m", "-u", "-n", old, new),
            trial.returncode,
            f"{target_branch} is checked out in {where} and local changes are in the way of "
            f"merging {branch}: {trial.stderr.decode('utf-8', 'replace').strip()}",
        )
    git(repo, "update-ref", "-m", f"orchestrate: merge {branch}", target_ref, new, old)
    try:
        git(where, "read-tree", "-m", "-u", old, new)
    except GitError as exc:  # only if someone edited the checkout in the last milliseconds
        raise GitError(
            exc.argv,
            exc.returncode,
            f"{target_ref} now points at the merge {new}, but the checkout in {where} could not "
            f"be updated ({exc.stderr}); run `git reset --keep {new}` there",
        ) from None
    return new



# ----------------------------------------------------------------------------------------------
# Resolving a conflicting merge in an integration worktree

#: Lines git writes around conflicting hunks; a resolution must leave none.
CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ", "||||||| ")
SEPARATOR_MARKER = "======="
HUNKS_LIMIT = 6000


@dataclass(frozen=True, slots=True)
class Integration:
    """A merge of ``branch`` into ``target`` left half-done in its own detached worktree at
    ``path`` for someone (an agent) to resolve: the conflicting files hold git's markers.
    ``target_commit``/``branch_commit`` are the exact commits being merged; ``hunks`` the
    conflicting regions, for a prompt (cut to :data:`HUNKS_LIMIT` characters)."""

    repo: Path
    path: Path
    target: str
    branch: str
    target_commit: str
    branch_commit: str
    conflicts: tuple[str, ...]
    hunks: str


def start_integration(repo: Path, path: Path, target_branch: str, branch: str) -> Integration:
    """Check out ``target_branch``'s tip detached at ``path`` and start merging ``branch``
    there (``git merge --no-commit``), leaving the conflicts in the files. Nothing else moves."""
    repo = Path(repo)
    target_commit = resolve_commit(repo, branch_ref(target_branch))
    branch_commit = resolve_commit(repo, branch_ref(branch))
    git(repo, "worktree", "prune")
    if path.exists():
        git(repo, "worktree", "remove", "--force", str(path), ok=(0, 128))
        if path.exists():
            raise GitError(("git", "worktree", "add", str(path)), 128, f"{path} exists; move it away first")
    path.parent.mkdir(parents=True, exist_ok=True)
    git(repo, "worktree", "add", "--quiet", "--detach", str(path), target_commit)
    git(path, "merge", "--no-ff", "--no-commit", "--no-edit", branch_commit, ok=(0, 1),
         config=(*commit_config(repo), "-c", "merge.conflictStyle=merge"))
    unmerged = git_out(path, "diff", "--name-only", "--diff-filter=U", "-z").split("\0")
    conflicts = tuple(sorted(p for p in unmerged if p))
    return Integration(repo, path, target_branch, branch, target_commit, branch_commit, conflicts,
                       _hunks(path, conflicts))


def _hunks(path: Path, conflicts: Sequence[str]) -> str:
    """The conflicting regions of each file (markers included), with the file's name."""
    parts: list[str] = []
    for name in conflicts:
        try:
            lines = (path / name).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        region: list[str] = []
        inside = False
        for line in lines:
            if line.startswith("<<<<<<< "):
                inside = True
            if inside:
                region.append(line)
            if line.startswith(">>>>>>> "):
                inside = False
        parts.append(f"--- {name}\n" + "\n".join(region))
    text = "\n".join(parts)
    return text if len(text) <= HUNKS_LIMIT else text[: HUNKS_LIMIT - 2] + "\n…"


def conflict_markers(integration: Integration) -> tuple[str, ...]:
    """The files (of those that conflicted, and any other changed one) that still hold a
    conflict marker line."""
    changed = git_out(integration.path, "diff", "--name-only", "-z", integration.target_commit).split("\0")
    candidates = sorted({*integration.conflicts, *(p for p in changed if p)})
    marked = []
    for name in candidates:
        try:
            lines = (integration.path / name).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if any(line.startswith(CONFLICT_MARKERS) or line == SEPARATOR_MARKER for line in lines):
            marked.append(name)
    return tuple(marked)


def finish_integration(integration: Integration, message: str) -> str:
    """Commit what is in the integration worktree as the merge of ``branch`` into ``target``
    and move ``target`` there (compare-and-swap: a target that moved since the integration
    started fails with GitError, changing nothing). Returns the new tip."""
    path, repo = integration.path, integration.repo
    git(path, "add", "--all")
    tree = git_out(path, "write-tree")
    new = git_out(path, "commit-tree", tree, "-p", integration.target_commit, "-p", integration.branch_commit,
               "-m", message, config=commit_config(repo))
    return _advance_target(repo, integration.target, integration.branch, integration.target_commit, new)


def drop_integration(integration: Integration) -> None:
    """Remove the integration worktree (its half-done merge with it). Idempotent."""
    if integration.path.exists():
        git(integration.repo, "worktree", "remove", "--force", str(integration.path), ok=(0, 128))
    git(integration.repo, "worktree", "prune")



# ----------------------------------------------------------------------------------------------
# A later run reusing merged work


def merged_work_problem(repo: str, commit: str, target: str, reads: Sequence[str]) -> str:
    """Why the work a workstream merged into ``target`` of ``repo`` as ``commit`` no longer
    stands ("" when it does): ``commit`` must still be in ``target``, and nothing it reads
    (``reads``: globs relative to the repository; its whole tree when empty) changed there since."""
    root = Path(repo)
    try:
        tip = try_resolve(root, branch_ref(target) if target else "HEAD")
        if tip is None:
            return f"its target branch {target} is gone from {repo}"
        if try_resolve(root, commit) is None or not is_ancestor(root, commit, tip):
            return f"its merge commit {commit[:10]} is no longer in {target}"
        pathspecs = [f":(glob){pattern}" for pattern in reads]
        if git(root, "diff", "--quiet", commit, tip, "--", *pathspecs, ok=(0, 1)).returncode:
            if reads:
                return f"what it reads changed in {target} since its merge ({commit[:10]})"
            return (f"{target} changed since its merge ({commit[:10]}); with no files_in declared "
                    "in the workstream, any change counts")
    except GitError as error:
        return f"its merge into {target} could not be checked: {error}"
    return ""
