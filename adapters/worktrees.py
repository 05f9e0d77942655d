"""Git worktree isolation and patch capture for workstreams.

Each unit of work gets its own git worktree at ``<root>/<run_id>/<ws_id>`` on its own branch
``orchestrate/<run_id>/<ws_id>``, made from a base commit that is resolved once and recorded.
What a task changed is captured as ``git add -A`` + ``git diff --cached`` against a commit
(name/status list and a binary patch) and committed with plumbing (``write-tree``/
``commit-tree``/``update-ref``). Merging finished work back is :mod:`adapters.merges`; how
git is run (environment, identity, errors) is :mod:`adapters.git`.

Pure git plumbing: synchronous, no threads, no database.

The base commit of a worktree is recorded as the ref ``refs/orchestrate/base/<run_id>/<ws_id>``
in the shared repository rather than in a file inside the worktree's admin directory: a ref
survives the directory being deleted and pruned (the case a resumed run must handle), keeps the
base reachable against ``git gc``, and is written atomically. ``git merge-base`` is only the
fallback for branches made by something else, since it gives the wrong answer once the branch
has been merged.

Needs git >= 2.38 (``merge-tree --write-tree``, ``worktree list -z``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adapters.git import (
    DIFF_OPTIONS,
    GitError,
    branch_ref,
    commit_config,
    git,
    git_out,
    is_ancestor,
    resolve_commit,
    try_resolve,
)

BRANCH_PREFIX = "orchestrate"
BASE_REF_PREFIX = "refs/orchestrate/base"


@dataclass(frozen=True, slots=True)
class Worktree:
    """A workstream's isolated checkout.

    ``path`` is absolute; ``branch`` is the short branch name (``orchestrate/<run>/<ws>``);
    ``base_commit`` is the full sha the branch was made from (fixed for the worktree's life,
    also across resumes); ``repo`` is the repository it belongs to (absolute).
    """

    path: Path
    branch: str
    base_commit: str
    repo: Path
    # Paths (relative to the worktree) that are never staged, committed, captured or cleaned:
    # files copied in (secrets such as .env) and links made by the worktree's set-up, that git
    # does not ignore already (git refuses a pathspec naming an ignored file).
    private: tuple[str, ...] = ()



@dataclass(frozen=True, slots=True)
class FileChange:
    """One changed path. ``status`` is one letter of ``git diff --name-status``: A(dded),
    M(odified), D(eleted), R(enamed), C(opied), T(ype changed). ``path`` is the path after the
    change (for D, the deleted path); ``old_path`` is set for R and C only; ``similarity`` is the
    R/C score (0-100). ``added``/``deleted`` are line counts, both None for a binary file.
    Paths are relative to the worktree root, decoded with :func:`os.fsdecode`."""

    status: str
    path: str
    old_path: str | None = None
    similarity: int | None = None
    added: int | None = None
    deleted: int | None = None
    binary: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``old_path``/``similarity`` only when set."""
        data: dict[str, Any] = {"status": self.status, "path": self.path}
        if self.old_path is not None:
            data["old_path"] = self.old_path
        if self.similarity is not None:
            data["similarity"] = self.similarity
        data.update(added=self.added, deleted=self.deleted, binary=self.binary)
        return data



@dataclass(frozen=True, slots=True)
class Changes:
    """Everything staged in a worktree relative to ``since`` (a full commit sha).

    ``patch`` is ``git diff --cached --binary`` output with ``a/``/``b/`` prefixes: applying it
    with ``git apply`` (``-p1``, the default) on a checkout of ``since`` reproduces the staged
    tree, binary files, renames and modes included. ``files`` is sorted by path."""

    files: tuple[FileChange, ...]
    patch: bytes
    since: str

    @property
    def empty(self) -> bool:
        return not self.files

    @property
    def patch_sha256(self) -> str:
        return hashlib.sha256(self.patch).hexdigest()



@dataclass(frozen=True, slots=True)
class WorktreeEntry:
    """One record of ``git worktree list --porcelain``. ``branch`` is the full ref
    (``refs/heads/...``) or None when detached/bare; ``head`` is None for a bare repository or
    an unborn branch. ``prunable`` is set when the directory is gone."""

    path: Path
    head: str | None
    branch: str | None
    bare: bool = False
    detached: bool = False
    locked: str | None = None
    prunable: str | None = None

    @property
    def ids(self) -> tuple[str, str] | None:
        """``(run_id, ws_id)`` when this is one of ours (branch ``orchestrate/<run>/<ws>``)."""
        prefix = f"refs/heads/{BRANCH_PREFIX}/"
        if not self.branch or not self.branch.startswith(prefix):
            return None
        parts = self.branch[len(prefix):].split("/")
        return (parts[0], parts[1]) if len(parts) == 2 else None


def _check_id(kind: str, value: str) -> None:
    """Ids become one path component and one ref component: keep them boring."""
    if (
        not value
        or value in (".", "..")
        or value.startswith((".", "-"))
        or value.endswith((".lock", "."))
        or any(c in value for c in "/\\ ~^:?*[\0\t\n@{")
        or ".." in value
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise ValueError(f"{kind} {value!r} cannot be used in a branch name and a directory name")


def branch_name(run_id: str, ws_id: str) -> str:
    """The branch a workstream's worktree is on: ``orchestrate/<run_id>/<ws_id>``."""
    _check_id("run_id", run_id)
    _check_id("ws_id", ws_id)
    return f"{BRANCH_PREFIX}/{run_id}/{ws_id}"


def _base_ref(run_id: str, ws_id: str) -> str:
    return f"{BASE_REF_PREFIX}/{run_id}/{ws_id}"


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)



def ignored_paths(path: Path, candidates: Sequence[str]) -> frozenset[str]:
    """Which of ``candidates`` (relative to the worktree at ``path``) git ignores there."""
    # One call per path: few paths, and `-z` needs --stdin, which _git keeps closed.
    return frozenset(c for c in candidates
                     if git(Path(path), "check-ignore", "-q", "--no-index", "--", c, ok=(0, 1)).returncode == 0)


def _private_pathspec(worktree: Worktree) -> tuple[str, ...]:
    """Pathspec for "everything but the private paths", from the worktree's top."""
    return (":(top)", *(f":(top,literal,exclude){path}" for path in worktree.private))


def _ignore_pattern(path: str) -> str:
    """A gitignore pattern matching exactly ``path`` from the top (``git clean -e``)."""
    escaped = "".join(f"\\{c}" if c in "*?[\\!#" else c for c in path)
    return "/" + escaped



# ----------------------------------------------------------------------------------------------
# Worktrees


def list_worktrees(repo: Path) -> list[WorktreeEntry]:
    """Every worktree of ``repo`` (main one first), from ``git worktree list --porcelain -z``.
    Use :attr:`WorktreeEntry.ids` to pick out a run's worktrees on resume."""
    raw = git(Path(repo), "worktree", "list", "--porcelain", "-z").stdout
    entries: list[WorktreeEntry] = []
    fields: dict[str, str | None] = {}
    for token in raw.split(b"\0"):
        if not token:
            if fields:
                entries.append(_entry(fields))
                fields = {}
            continue
        key, _, value = os.fsdecode(token).partition(" ")
        fields[key] = value
    if fields:
        entries.append(_entry(fields))
    return entries


def _entry(fields: Mapping[str, str | None]) -> WorktreeEntry:
    return WorktreeEntry(
        path=Path(fields["worktree"] or ""),
        head=fields.get("HEAD") or None,
        branch=fields.get("branch") or None,
        bare="bare" in fields,
        detached="detached" in fields,
        locked=fields.get("locked") if "locked" in fields else None,
        prunable=fields.get("prunable") if "prunable" in fields else None,
    )


def ensure_worktree(repo: Path, root: Path, run_id: str, ws_id: str, base: str = "HEAD") -> Worktree:
    """Create the worktree ``root/<run_id>/<ws_id>`` on branch ``orchestrate/<run_id>/<ws_id>``,
    or return it when it already exists (a resumed run). Idempotent.

    ``base`` is resolved to a commit once, when the worktree is first made, and recorded; later
    calls return the recorded ``base_commit`` whatever ``base`` now says. If the branch exists
    but the directory is gone (deleted by hand, or removed with ``delete_branch=False``), stale
    metadata is pruned and the worktree is re-created on the existing branch, keeping its commits.
    Raises GitError (or ValueError for unusable ids) when the path is taken by something else.
    Keep ``root`` outside the repository or git-ignored.
    """
    repo = Path(repo).resolve()
    branch = branch_name(run_id, ws_id)
    ref = f"refs/heads/{branch}"
    path = (Path(root) / run_id / ws_id).resolve()

    registered = next((e for e in list_worktrees(repo) if _same_path(e.path, path)), None)
    if registered is not None and path.is_dir() and (path / ".git").exists():
        if registered.branch != ref:
            found = registered.branch or ("detached HEAD" if registered.detached else "no branch")
            raise GitError(
                ("git", "-C", str(path), "symbolic-ref", "HEAD"),
                1,
                f"worktree {path} is on {found}, expected {ref}",
            )
        return Worktree(path, branch, _recorded_base(repo, run_id, ws_id, ref, base), repo)

    # Gone or never made: drop stale registrations (a deleted directory) before adding it again.
    git(repo, "worktree", "prune")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise GitError(
            ("git", "-C", str(repo), "worktree", "add", str(path)),
            128,
            f"{path} exists and is not an orchestrate worktree; move it away first",
        )
    base_commit = _recorded_base(repo, run_id, ws_id, ref, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    if try_resolve(repo, ref) is not None:
        git(repo, "worktree", "add", "--quiet", str(path), branch)
    else:
        git(repo, "worktree", "add", "--quiet", "-b", branch, str(path), base_commit)
    return Worktree(path, branch, base_commit, repo)


def _recorded_base(repo: Path, run_id: str, ws_id: str, branch: str, base: str) -> str:
    """The recorded base commit, recording one first if there is none."""
    base_ref = _base_ref(run_id, ws_id)
    recorded = try_resolve(repo, base_ref)
    if recorded is not None:
        return recorded
    resolved = resolve_commit(repo, base)
    if try_resolve(repo, branch) is not None:  # a branch we did not record: best guess
        resolved = git_out(repo, "merge-base", resolved, branch)
    # Create-only (empty old value): if another process recorded one meanwhile, use theirs.
    done = git(repo, "update-ref", "-m", "orchestrate: record base", base_ref, resolved, "", ok=(0, 1, 128))
    if done.returncode != 0:
        recorded = try_resolve(repo, base_ref)
        if recorded is None:
            raise GitError(("git", "-C", str(repo), "update-ref", base_ref, resolved, ""), done.returncode, done.stderr)
        return recorded
    return resolved


def orchestrate_branches(repo: Path, run_id: str | None = None) -> list[tuple[str, str, str]]:
    """``(run_id, ws_id, branch)`` of every ``orchestrate/<run>/<ws>`` branch in ``repo`` (of
    ``run_id`` only, when given), sorted."""
    prefix = f"refs/heads/{BRANCH_PREFIX}/" + (f"{run_id}/" if run_id else "")
    raw = git_out(Path(repo), "for-each-ref", "--format=%(refname)", prefix)
    found = []
    for ref in raw.splitlines():
        parts = ref[len("refs/heads/"):].split("/")
        if len(parts) == 3:
            found.append((parts[1], parts[2], "/".join(parts)))
    return sorted(found)


def is_merged(repo: Path, branch: str, target: str) -> bool:
    """Whether ``branch`` has nothing ``target`` lacks: its tip is contained in ``target``, or
    it has no commit of its own since its recorded base. False if ``target`` does not exist."""
    repo = Path(repo)
    tip = resolve_commit(repo, branch_ref(branch))
    target_tip = try_resolve(repo, branch_ref(target))
    if target_tip is not None and is_ancestor(repo, tip, target_tip):
        return True
    parts = branch.split("/")
    base = try_resolve(repo, _base_ref(parts[1], parts[2])) if len(parts) == 3 else None
    return base == tip



def has_uncommitted(path: Path, private: Sequence[str] = ()) -> bool:
    """Whether the checkout at ``path`` has changes git would show, ignored files and the
    ``private`` globs (what its set-up copied or linked in from the repository) aside."""
    spec = (":(top)", *(f":(top,glob,exclude){pattern}" for pattern in private))
    return bool(git(Path(path), "status", "--porcelain", "--untracked-files=all", "--", *spec).stdout.strip())


def head(worktree: Worktree) -> str:
    """The full sha of the worktree's HEAD commit."""
    return git_out(worktree.path, "rev-parse", "--verify", "HEAD^{commit}")


def remove_worktree(worktree: Worktree, *, delete_branch: bool) -> None:
    """Remove the worktree (``--force``: uncommitted changes are lost) and prune its metadata.
    With ``delete_branch`` also delete its branch and recorded base, so a later
    :func:`ensure_worktree` starts afresh; without, the branch (and its commits) stays and a
    later ``ensure_worktree`` re-creates the worktree on it. Idempotent."""
    repo = worktree.repo
    registered = any(_same_path(e.path, worktree.path) for e in list_worktrees(repo))
    if registered and worktree.path.exists():
        git(repo, "worktree", "remove", "--force", str(worktree.path))
    git(repo, "worktree", "prune")
    try:
        worktree.path.parent.rmdir()  # root/<run_id>, once its last workstream is gone
    except OSError:
        pass
    if delete_branch:
        ref = f"refs/heads/{worktree.branch}"
        if try_resolve(repo, ref) is not None:
            git(repo, "branch", "--quiet", "-D", worktree.branch)
        parts = worktree.branch.split("/")
        if len(parts) == 3 and parts[0] == BRANCH_PREFIX:
            git(repo, "update-ref", "-d", _base_ref(parts[1], parts[2]), ok=(0, 1))



# ----------------------------------------------------------------------------------------------
# Changes and commits


def discard_uncommitted(worktree: Worktree) -> bool:
    """Throw away what is not committed in the worktree (an interrupted attempt's half-done
    edits), so the next attempt starts from the last recorded commit. True if anything went."""
    dirty = bool(git(worktree.path, "status", "--porcelain", "--untracked-files=all", "--",
                      *_private_pathspec(worktree)).stdout.strip())
    if dirty:
        git(worktree.path, "reset", "--hard", "--quiet", "HEAD")
        keep = [arg for path in worktree.private for arg in ("-e", _ignore_pattern(path))]
        git(worktree.path, "clean", "-fdq", *keep)
    return dirty


def current_branch(repo: Path) -> str | None:
    """The branch checked out in ``repo``'s main worktree, or None when HEAD is detached."""
    result = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", ok=(0, 1))
    return result.stdout.decode().strip() or None


def _stage_all(worktree: Worktree) -> None:
    git(worktree.path, "add", "--all", "--", *_private_pathspec(worktree))


def capture_changes(worktree: Worktree, since: str) -> Changes:
    """Stage everything (``git add -A``: new, modified and deleted files; ignored files stay
    out) and describe the staged tree relative to the commit ``since``. The worktree's files and
    HEAD are not changed; the index is (everything is staged afterwards)."""
    _stage_all(worktree)
    since_sha = resolve_commit(worktree.path, since)
    status = git(worktree.path, "diff", "--cached", "--name-status", "-z", *DIFF_OPTIONS, since_sha, "--").stdout
    numstat = git(worktree.path, "diff", "--cached", "--numstat", "-z", *DIFF_OPTIONS, since_sha, "--").stdout
    counts = _parse_numstat(numstat)
    files = []
    for change in _parse_name_status(status):
        added, deleted = counts.get((change.old_path, change.path), (None, None))
        binary = (change.old_path, change.path) in counts and added is None
        files.append(
            FileChange(change.status, change.path, change.old_path, change.similarity, added, deleted, binary)
        )
    patch = git(worktree.path, "diff", "--cached", "--binary", "--full-index", *DIFF_OPTIONS, since_sha, "--").stdout
    return Changes(tuple(sorted(files, key=lambda f: (f.path, f.old_path or ""))), patch, since_sha)


def _parse_name_status(raw: bytes) -> list[FileChange]:
    """``git diff --name-status -z``: ``X\\0path\\0`` or ``R100\\0old\\0new\\0`` (R, C)."""
    tokens = raw.split(b"\0")
    if tokens and tokens[-1] == b"":
        tokens.pop()
    changes: list[FileChange] = []
    i = 0
    while i < len(tokens):
        code = tokens[i].decode("ascii")
        letter, score = code[:1], code[1:]
        if letter in ("R", "C"):
            old, new = os.fsdecode(tokens[i + 1]), os.fsdecode(tokens[i + 2])
            changes.append(FileChange(letter, new, old, int(score) if score else None))
            i += 3
        else:
            changes.append(FileChange(letter, os.fsdecode(tokens[i + 1])))
            i += 2
    return changes


def _parse_numstat(raw: bytes) -> dict[tuple[str | None, str], tuple[int | None, int | None]]:
    """``git diff --numstat -z``: ``A\\tD\\tpath\\0`` or ``A\\tD\\t\\0old\\0new\\0``;
    ``-\\t-`` for binary files. Keyed by (old_path or None, path)."""
    tokens = raw.split(b"\0")
    counts: dict[tuple[str | None, str], tuple[int | None, int | None]] = {}
    i = 0
    while i < len(tokens) and tokens[i]:
        added, deleted, path = tokens[i].split(b"\t", 2)
        values = (None if added == b"-" else int(added), None if deleted == b"-" else int(deleted))
        if path:
            counts[(None, os.fsdecode(path))] = values
            i += 1
        else:
            counts[(os.fsdecode(tokens[i + 1]), os.fsdecode(tokens[i + 2]))] = values
            i += 3
    return counts


def commit_all(worktree: Worktree, message: str) -> str | None:
    """Stage everything and commit it on the worktree's branch; return the new commit's sha, or
    None when the staged tree equals HEAD's (nothing to commit). Either way the worktree is clean
    afterwards (apart from ignored files), so the next task starts from a known commit.
    Plumbing (``write-tree``/``commit-tree``/``update-ref``): no hooks, no editor, no signing."""
    _stage_all(worktree)
    tree = git_out(worktree.path, "write-tree")
    parent = head(worktree)
    if tree == git_out(worktree.path, "rev-parse", f"{parent}^{{tree}}"):
        return None
    new = git_out(worktree.path, "commit-tree", tree, "-p", parent, "-m", message, config=commit_config(worktree.repo))
    git(worktree.path, "update-ref", "-m", f"commit: {message.splitlines()[0] if message else ''}", "HEAD", new, parent)
    return new



# ----------------------------------------------------------------------------------------------
# Patch files


def _component(kind: str, value: Any) -> str:
    text = quote(str(value), safe="-_.~@+=,")
    if not text or text in (".", ".."):
        raise ValueError(f"{kind} {value!r} cannot name a patch file")
    return text


def store_patch(patches_dir: Path, run_id: str, ws_id: str, task_key: str, attempt: int, patch: bytes) -> Path:
    """Write a task attempt's patch to ``<patches_dir>/<run_id>/<ws_id>/<task_key>.<attempt>.patch``
    and return that path.

    Components are percent-quoted, so a ``/`` in a task key stays one file; re-recording an
    attempt replaces its file atomically. The database row that describes the patch (files,
    sha256, commits) is the record; this is only its content. Not fsynced.
    """
    target = Path(
        patches_dir,
        _component("run_id", run_id),
        _component("ws_id", ws_id),
        f"{_component('task_key', task_key)}.{_component('attempt', attempt)}.patch",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(patch)
    os.replace(partial, target)
    return target
