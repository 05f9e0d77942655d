"""Git worktree isolation and patch capture for workstreams.

Each unit of work gets its own git worktree at ``<root>/<run_id>/<ws_id>`` on its own branch
``orchestrate/<run_id>/<ws_id>``, made from a base commit that is resolved once and recorded.
What a task changed is captured as ``git add -A`` + ``git diff --cached`` against a commit
(name/status list and a binary patch); finished work is committed and merged back with
``git merge-tree --write-tree`` + ``git commit-tree`` + a compare-and-swap ``git update-ref``,
so a conflict check never touches any working tree.

Pure git plumbing: synchronous, no threads, no database. Every git call runs with an explicit
argv (never a shell), ``GIT_TERMINAL_PROMPT=0``, ``LC_ALL=C``, stdin closed, and without the
repository-locating variables (``GIT_DIR``, ``GIT_INDEX_FILE``…) a parent git might have set.
Commits are made with the repository's own identity (``user.name``/``user.email`` as git
config gives them there), or the author named by ``ORCHESTRATE_GIT_AUTHOR`` (``Name <email>``),
falling back to ``orchestrate <orchestrate@localhost>`` only where no identity is configured;
never signed and never running hooks, so they work on any machine.
A failing git command raises :class:`GitError`.

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
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "BASE_REF_PREFIX",
    "BRANCH_PREFIX",
    "Changes",
    "FileChange",
    "GitError",
    "Integration",
    "MergeCheck",
    "MergeConflict",
    "TargetDirty",
    "Worktree",
    "WorktreeEntry",
    "WorktreeError",
    "branch_name",
    "capture_changes",
    "commit_all",
    "commit_identity",
    "conflict_markers",
    "drop_integration",
    "ensure_worktree",
    "finish_integration",
    "has_uncommitted",
    "head",
    "ignored_paths",
    "is_merged",
    "list_worktrees",
    "merge_check",
    "merge_into",
    "orchestrate_branches",
    "remove_worktree",
    "start_integration",
    "store_patch",
    "with_trailers",
]

BRANCH_PREFIX = "orchestrate"
BASE_REF_PREFIX = "refs/orchestrate/base"
FALLBACK_IDENTITY = ("orchestrate", "orchestrate@localhost")
AUTHOR_ENV = "ORCHESTRATE_GIT_AUTHOR"
# Commits are plumbing: never signed (a signing prompt would hang or fail headless).
_NO_SIGNING = ("-c", "commit.gpgSign=false")
# Diff output that `git apply` understands whatever the user's diff.* configuration says.
_DIFF_OPTIONS = (
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--find-renames",
    "--src-prefix=a/",
    "--dst-prefix=b/",
    "--no-relative",
)
_TIMEOUT_S = 300.0
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


# ----------------------------------------------------------------------------------------------
# Errors


class WorktreeError(Exception):
    """Base class of everything this module raises on purpose."""


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


# ----------------------------------------------------------------------------------------------
# Results


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


# ----------------------------------------------------------------------------------------------
# Running git


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_ENV_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _git(
    cwd: Path,
    *args: str,
    ok: Iterable[int] = (0,),
    config: Sequence[str] = (),
    timeout: float = _TIMEOUT_S,
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


def _out(cwd: Path, *args: str, **kwargs: Any) -> str:
    return _git(cwd, *args, **kwargs).stdout.decode("utf-8", "surrogateescape").strip()


def _resolve_commit(repo: Path, rev: str) -> str:
    return _out(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")


def _try_resolve(repo: Path, ref: str) -> str | None:
    done = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", ok=(0, 1))
    return done.stdout.decode().strip() if done.returncode == 0 else None


def _is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    return _git(repo, "merge-base", "--is-ancestor", ancestor, descendant, ok=(0, 1)).returncode == 0


def _branch_ref(name: str) -> str:
    return name if name.startswith("refs/") else f"refs/heads/{name}"


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
        return _git(repo, "config", "--get", key, ok=(0, 1)).stdout.decode("utf-8", "replace").strip()

    return config("user.name") or FALLBACK_IDENTITY[0], config("user.email") or FALLBACK_IDENTITY[1]


def _commit_config(repo: Path) -> tuple[str, ...]:
    name, email = commit_identity(repo)
    return ("-c", f"user.name={name}", "-c", f"user.email={email}", *_NO_SIGNING)


def with_trailers(message: str, trailers: Sequence[tuple[str, str]]) -> str:
    """``message`` with git trailers (``Key: value`` lines after a blank line)."""
    if not trailers:
        return message
    return f"{message.rstrip()}\n\n" + "\n".join(f"{key}: {value}" for key, value in trailers) + "\n"


def ignored_paths(path: Path, candidates: Sequence[str]) -> frozenset[str]:
    """Which of ``candidates`` (relative to the worktree at ``path``) git ignores there."""
    # One call per path: few paths, and `-z` needs --stdin, which _git keeps closed.
    return frozenset(c for c in candidates
                     if _git(Path(path), "check-ignore", "-q", "--no-index", "--", c, ok=(0, 1)).returncode == 0)


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
    raw = _git(Path(repo), "worktree", "list", "--porcelain", "-z").stdout
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
    _git(repo, "worktree", "prune")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise GitError(
            ("git", "-C", str(repo), "worktree", "add", str(path)),
            128,
            f"{path} exists and is not an orchestrate worktree; move it away first",
        )
    base_commit = _recorded_base(repo, run_id, ws_id, ref, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _try_resolve(repo, ref) is not None:
        _git(repo, "worktree", "add", "--quiet", str(path), branch)
    else:
        _git(repo, "worktree", "add", "--quiet", "-b", branch, str(path), base_commit)
    return Worktree(path, branch, base_commit, repo)


def _recorded_base(repo: Path, run_id: str, ws_id: str, branch_ref: str, base: str) -> str:
    """The recorded base commit, recording one first if there is none."""
    base_ref = _base_ref(run_id, ws_id)
    recorded = _try_resolve(repo, base_ref)
    if recorded is not None:
        return recorded
    resolved = _resolve_commit(repo, base)
    if _try_resolve(repo, branch_ref) is not None:  # a branch we did not record: best guess
        resolved = _out(repo, "merge-base", resolved, branch_ref)
    # Create-only (empty old value): if another process recorded one meanwhile, use theirs.
    done = _git(repo, "update-ref", "-m", "orchestrate: record base", base_ref, resolved, "", ok=(0, 1, 128))
    if done.returncode != 0:
        recorded = _try_resolve(repo, base_ref)
        if recorded is None:
            raise GitError(("git", "-C", str(repo), "update-ref", base_ref, resolved, ""), done.returncode, done.stderr)
        return recorded
    return resolved


def orchestrate_branches(repo: Path, run_id: str | None = None) -> list[tuple[str, str, str]]:
    """``(run_id, ws_id, branch)`` of every ``orchestrate/<run>/<ws>`` branch in ``repo`` (of
    ``run_id`` only, when given), sorted."""
    prefix = f"refs/heads/{BRANCH_PREFIX}/" + (f"{run_id}/" if run_id else "")
    raw = _out(Path(repo), "for-each-ref", "--format=%(refname)", prefix)
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
    tip = _resolve_commit(repo, _branch_ref(branch))
    target_tip = _try_resolve(repo, _branch_ref(target))
    if target_tip is not None and _is_ancestor(repo, tip, target_tip):
        return True
    parts = branch.split("/")
    base = _try_resolve(repo, _base_ref(parts[1], parts[2])) if len(parts) == 3 else None
    return base == tip


def merged_work_problem(repo: str, commit: str, target: str, reads: Sequence[str]) -> str:
    """Why the work a workstream merged into ``target`` of ``repo`` as ``commit`` no longer
    stands ("" when it does): ``commit`` must still be in ``target``, and nothing it reads
    (``reads``: globs relative to the repository; its whole tree when empty) changed there since."""
    root = Path(repo)
    try:
        tip = _try_resolve(root, _branch_ref(target) if target else "HEAD")
        if tip is None:
            return f"its target branch {target} is gone from {repo}"
        if _try_resolve(root, commit) is None or not _is_ancestor(root, commit, tip):
            return f"its merge commit {commit[:10]} is no longer in {target}"
        pathspecs = [f":(glob){pattern}" for pattern in reads]
        if _git(root, "diff", "--quiet", commit, tip, "--", *pathspecs, ok=(0, 1)).returncode:
            if reads:
                return f"what it reads changed in {target} since its merge ({commit[:10]})"
            return (f"{target} changed since its merge ({commit[:10]}); with no files_in declared "
                    "in the workstream, any change counts")
    except GitError as error:
        return f"its merge into {target} could not be checked: {error}"
    return ""


def has_uncommitted(path: Path, private: Sequence[str] = ()) -> bool:
    """Whether the checkout at ``path`` has changes git would show, ignored files and the
    ``private`` globs (what its set-up copied or linked in from the repository) aside."""
    spec = (":(top)", *(f":(top,glob,exclude){pattern}" for pattern in private))
    return bool(_git(Path(path), "status", "--porcelain", "--untracked-files=all", "--", *spec).stdout.strip())


def head(worktree: Worktree) -> str:
    """The full sha of the worktree's HEAD commit."""
    return _out(worktree.path, "rev-parse", "--verify", "HEAD^{commit}")


def remove_worktree(worktree: Worktree, *, delete_branch: bool) -> None:
    """Remove the worktree (``--force``: uncommitted changes are lost) and prune its metadata.
    With ``delete_branch`` also delete its branch and recorded base, so a later
    :func:`ensure_worktree` starts afresh; without, the branch (and its commits) stays and a
    later ``ensure_worktree`` re-creates the worktree on it. Idempotent."""
    repo = worktree.repo
    registered = any(_same_path(e.path, worktree.path) for e in list_worktrees(repo))
    if registered and worktree.path.exists():
        _git(repo, "worktree", "remove", "--force", str(worktree.path))
    _git(repo, "worktree", "prune")
    try:
        worktree.path.parent.rmdir()  # root/<run_id>, once its last workstream is gone
    except OSError:
        pass
    if delete_branch:
        ref = f"refs/heads/{worktree.branch}"
        if _try_resolve(repo, ref) is not None:
            _git(repo, "branch", "--quiet", "-D", worktree.branch)
        parts = worktree.branch.split("/")
        if len(parts) == 3 and parts[0] == BRANCH_PREFIX:
            _git(repo, "update-ref", "-d", _base_ref(parts[1], parts[2]), ok=(0, 1))


# ----------------------------------------------------------------------------------------------
# Changes and commits


def discard_uncommitted(worktree: Worktree) -> bool:
    """Throw away what is not committed in the worktree (an interrupted attempt's half-done
    edits), so the next attempt starts from the last recorded commit. True if anything went."""
    dirty = bool(_git(worktree.path, "status", "--porcelain", "--untracked-files=all", "--",
                      *_private_pathspec(worktree)).stdout.strip())
    if dirty:
        _git(worktree.path, "reset", "--hard", "--quiet", "HEAD")
        keep = [arg for path in worktree.private for arg in ("-e", _ignore_pattern(path))]
        _git(worktree.path, "clean", "-fdq", *keep)
    return dirty


def current_branch(repo: Path) -> str | None:
    """The branch checked out in ``repo``'s main worktree, or None when HEAD is detached."""
    result = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", ok=(0, 1))
    return result.stdout.decode().strip() or None


def _stage_all(worktree: Worktree) -> None:
    _git(worktree.path, "add", "--all", "--", *_private_pathspec(worktree))


def capture_changes(worktree: Worktree, since: str) -> Changes:
    """Stage everything (``git add -A``: new, modified and deleted files; ignored files stay
    out) and describe the staged tree relative to the commit ``since``. The worktree's files and
    HEAD are not changed; the index is (everything is staged afterwards)."""
    _stage_all(worktree)
    since_sha = _resolve_commit(worktree.path, since)
    status = _git(worktree.path, "diff", "--cached", "--name-status", "-z", *_DIFF_OPTIONS, since_sha, "--").stdout
    numstat = _git(worktree.path, "diff", "--cached", "--numstat", "-z", *_DIFF_OPTIONS, since_sha, "--").stdout
    counts = _parse_numstat(numstat)
    files = []
    for change in _parse_name_status(status):
        added, deleted = counts.get((change.old_path, change.path), (None, None))
        binary = (change.old_path, change.path) in counts and added is None
        files.append(
            FileChange(change.status, change.path, change.old_path, change.similarity, added, deleted, binary)
        )
    patch = _git(worktree.path, "diff", "--cached", "--binary", "--full-index", *_DIFF_OPTIONS, since_sha, "--").stdout
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
    tree = _out(worktree.path, "write-tree")
    parent = head(worktree)
    if tree == _out(worktree.path, "rev-parse", f"{parent}^{{tree}}"):
        return None
    new = _out(worktree.path, "commit-tree", tree, "-p", parent, "-m", message, config=_commit_config(worktree.repo))
    _git(worktree.path, "update-ref", "-m", f"commit: {message.splitlines()[0] if message else ''}", "HEAD", new, parent)
    return new


# ----------------------------------------------------------------------------------------------
# Merging


def merge_check(repo: Path, target_branch: str, branch: str) -> MergeCheck:
    """Trial-merge ``branch`` into ``target_branch`` with ``git merge-tree --write-tree``:
    only objects are written, no ref, index or working tree changes."""
    repo = Path(repo)
    target_commit = _resolve_commit(repo, _branch_ref(target_branch))
    branch_commit = _resolve_commit(repo, _branch_ref(branch))
    return _merge_tree(repo, target_commit, branch_commit)


def _merge_tree(repo: Path, target_commit: str, branch_commit: str) -> MergeCheck:
    done = _git(
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
    target_ref = _branch_ref(target_branch)
    old = _resolve_commit(repo, target_ref)
    theirs = _resolve_commit(repo, _branch_ref(branch))
    if _is_ancestor(repo, theirs, old):
        return old
    check = _merge_tree(repo, old, theirs)
    if not check.clean or check.tree is None:
        raise MergeConflict(target_branch, branch, check.conflicts, check.messages)
    new = _out(repo, "commit-tree", check.tree, "-p", old, "-p", theirs, "-m", message, config=_commit_config(repo))
    return _advance_target(repo, target_branch, branch, old, new)


def _advance_target(repo: Path, target_branch: str, branch: str, old: str, new: str) -> str:
    """Move ``target_branch`` from ``old`` to the merge commit ``new`` (compare-and-swap),
    bringing along the worktree it is checked out in, if any (see :func:`merge_into`)."""
    target_ref = _branch_ref(target_branch)
    checkout = next(
        (e for e in list_worktrees(repo) if e.branch == target_ref and not e.bare and e.prunable is None),
        None,
    )
    if checkout is None:
        _git(repo, "update-ref", "-m", f"orchestrate: merge {branch}", target_ref, new, old)
        return new

    where = checkout.path
    _git(where, "update-index", "-q", "--refresh", ok=(0, 1))
    staged = _git(where, "diff-index", "--cached", "--quiet", "HEAD", "--", ok=(0, 1))
    if staged.returncode != 0:
        raise TargetDirty(
            ("git", "-C", str(where), "diff-index", "--cached", "--quiet", "HEAD"),
            1,
            f"{target_branch} is checked out in {where} with staged changes; not merging {branch}",
        )
    trial = _git(where, "read-tree", "-m", "-u", "-n", old, new, ok=(0, 128))
    if trial.returncode != 0:
        raise TargetDirty(
            ("git", "-C", str(where), "read-tree", "-m", "-u", "-n", old, new),
            trial.returncode,
            f"{target_branch} is checked out in {where} and local changes are in the way of "
            f"merging {branch}: {trial.stderr.decode('utf-8', 'replace').strip()}",
        )
    _git(repo, "update-ref", "-m", f"orchestrate: merge {branch}", target_ref, new, old)
    try:
        _git(where, "read-tree", "-m", "-u", old, new)
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
    target_commit = _resolve_commit(repo, _branch_ref(target_branch))
    branch_commit = _resolve_commit(repo, _branch_ref(branch))
    _git(repo, "worktree", "prune")
    if path.exists():
        _git(repo, "worktree", "remove", "--force", str(path), ok=(0, 128))
        if path.exists():
            raise GitError(("git", "worktree", "add", str(path)), 128, f"{path} exists; move it away first")
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(repo, "worktree", "add", "--quiet", "--detach", str(path), target_commit)
    _git(path, "merge", "--no-ff", "--no-commit", "--no-edit", branch_commit, ok=(0, 1),
         config=(*_commit_config(repo), "-c", "merge.conflictStyle=merge"))
    unmerged = _out(path, "diff", "--name-only", "--diff-filter=U", "-z").split("\0")
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
    changed = _out(integration.path, "diff", "--name-only", "-z", integration.target_commit).split("\0")
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
    _git(path, "add", "--all")
    tree = _out(path, "write-tree")
    new = _out(path, "commit-tree", tree, "-p", integration.target_commit, "-p", integration.branch_commit,
               "-m", message, config=_commit_config(repo))
    return _advance_target(repo, integration.target, integration.branch, integration.target_commit, new)


def drop_integration(integration: Integration) -> None:
    """Remove the integration worktree (its half-done merge with it). Idempotent."""
    if integration.path.exists():
        _git(integration.repo, "worktree", "remove", "--force", str(integration.path), ok=(0, 128))
    _git(integration.repo, "worktree", "prune")


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
