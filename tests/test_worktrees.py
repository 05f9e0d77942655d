"""adapters.worktrees, adapters.merges and adapters.git against real git in temporary directories."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from adapters.git import GitError
from adapters.merges import MergeConflict, TargetDirty, merge_check, merge_into
from adapters.worktrees import (
    Changes,
    FileChange,
    capture_changes,
    commit_all,
    ensure_worktree,
    head,
    list_worktrees,
    remove_worktree,
    store_patch,
)

IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *IDENTITY, "-C", str(cwd), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture(autouse=True)
def no_git_identity(tmp_path, monkeypatch):
    """No global/system git config: commits must not depend on the machine's identity."""
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository on `main` with two commits, `main` checked out and clean."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("one\ntwo\nthree\n")
    (path / "b.txt").write_text("bee\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    (path / "dir with space").mkdir()
    (path / "dir with space" / "c file.txt").write_text("a file with a space in its name\n" * 3)
    (path / "a.txt").write_text("one\ntwo\nthree\nfour\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "second")
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "worktrees"


def status(path: Path) -> str:
    done = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=all"],
                          capture_output=True, text=True, check=True)
    return done.stdout.rstrip("\n")


def test_ensure_worktree_creates_then_finds_it_again(repo, root):
    main_sha = git(repo, "rev-parse", "HEAD")
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    assert wt.path == (root / "run-1" / "ws-a").resolve()
    assert wt.branch == "orchestrate/run-1/ws-a"
    assert wt.base_commit == main_sha
    assert wt.repo == repo.resolve()
    assert git(wt.path, "symbolic-ref", "HEAD") == "refs/heads/orchestrate/run-1/ws-a"
    assert head(wt) == main_sha
    assert (wt.path / "a.txt").read_text() == "one\ntwo\nthree\nfour\n"

    # Work in progress survives a resume; main moving on does not change the recorded base.
    (wt.path / "wip.txt").write_text("in progress\n")
    (repo / "later.txt").write_text("later\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "later")
    again = ensure_worktree(repo, root, "run-1", "ws-a")
    assert again == wt
    assert (again.path / "wip.txt").read_text() == "in progress\n"
    # Even an explicit, different base is ignored once one is recorded.
    assert ensure_worktree(repo, root, "run-1", "ws-a", base="main").base_commit == main_sha


def test_base_commit_is_recorded_and_read_back_after_commits(repo, root):
    first = git(repo, "rev-parse", "HEAD~1")
    wt = ensure_worktree(repo, root, "run-1", "ws-a", base="HEAD~1")
    assert wt.base_commit == first
    (wt.path / "new.txt").write_text("x\n")
    commit_all(wt, "work")
    assert ensure_worktree(repo, root, "run-1", "ws-a").base_commit == first
    assert git(repo, "rev-parse", "refs/orchestrate/base/run-1/ws-a") == first


def test_capture_changes_add_modify_delete_rename_binary_spaces(repo, root):
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    (wt.path / "a.txt").write_text("one\nTWO\nthree\nfour\n")  # modify
    (wt.path / "b.txt").unlink()  # delete
    renamed = wt.path / "renamed dir" / "ünïcode nàme.txt"
    renamed.parent.mkdir()
    (wt.path / "dir with space" / "c file.txt").rename(renamed)  # rename, spaces + unicode
    blob = bytes(range(256)) * 8
    (wt.path / "image.bin").write_bytes(blob)  # binary add
    (wt.path / "new file.txt").write_text("brand new\n")  # add with a space

    changes = capture_changes(wt, wt.base_commit)
    assert isinstance(changes, Changes) and not changes.empty
    assert changes.since == wt.base_commit
    got = {(f.status, f.path, f.old_path) for f in changes.files}
    assert got == {
        ("M", "a.txt", None),
        ("D", "b.txt", None),
        ("R", "renamed dir/ünïcode nàme.txt", "dir with space/c file.txt"),
        ("A", "image.bin", None),
        ("A", "new file.txt", None),
    }
    by_path = {f.path: f for f in changes.files}
    assert by_path["renamed dir/ünïcode nàme.txt"].similarity == 100
    assert by_path["image.bin"].binary and by_path["image.bin"].added is None
    assert (by_path["a.txt"].added, by_path["a.txt"].deleted, by_path["a.txt"].binary) == (1, 1, False)
    assert b"GIT binary patch" in changes.patch
    assert changes.patch_sha256 == hashlib.sha256(changes.patch).hexdigest()
    # Capturing stages but commits nothing.
    assert head(wt) == wt.base_commit


def test_patch_applies_to_the_base_and_reproduces_the_tree(repo, root, tmp_path):
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    (wt.path / "a.txt").write_text("changed\n")
    (wt.path / "b.txt").unlink()
    (wt.path / "dir with space" / "c file.txt").rename(wt.path / "moved é.txt")
    (wt.path / "data.bin").write_bytes(b"\x00\x01\x02binary\xff" * 100)
    (wt.path / "tool.sh").write_text("#!/bin/sh\n")
    (wt.path / "tool.sh").chmod(0o755)
    changes = capture_changes(wt, wt.base_commit)
    expected_tree = git(wt.path, "write-tree")

    patch_file = tmp_path / "change.patch"
    patch_file.write_bytes(changes.patch)
    check = tmp_path / "check"
    git(repo, "worktree", "add", "-q", "--detach", str(check), wt.base_commit)
    git(check, "apply", "--index", str(patch_file))
    assert git(check, "write-tree") == expected_tree
    assert (check / "data.bin").read_bytes() == b"\x00\x01\x02binary\xff" * 100


def test_changes_since_a_later_commit_and_empty_changes(repo, root):
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    assert capture_changes(wt, wt.base_commit).empty
    assert capture_changes(wt, wt.base_commit).patch == b""
    (wt.path / "one.txt").write_text("1\n")
    first = commit_all(wt, "task one")
    (wt.path / "two.txt").write_text("2\n")
    changes = capture_changes(wt, first)
    assert [(f.status, f.path) for f in changes.files] == [("A", "two.txt")]
    assert [f.path for f in capture_changes(wt, wt.base_commit).files] == ["one.txt", "two.txt"]


def test_commit_all_leaves_the_worktree_clean_and_returns_none_when_nothing_changed(repo, root):
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    assert commit_all(wt, "nothing") is None
    (wt.path / "a.txt").write_text("edited\n")
    (wt.path / "untracked new.txt").write_text("new\n")
    sha = commit_all(wt, "task: edit a")
    assert sha is not None and head(wt) == sha
    assert status(wt.path) == ""
    assert git(wt.path, "log", "-1", "--format=%an <%ae>|%P|%s") == f"orchestrate <orchestrate@localhost>|{wt.base_commit}|task: edit a"
    assert git(repo, "rev-parse", "refs/heads/orchestrate/run-1/ws-a") == sha
    assert commit_all(wt, "again") is None
    assert capture_changes(wt, sha).empty


def test_two_worktrees_on_different_files_merge_cleanly_in_sequence(repo, root):
    start = git(repo, "rev-parse", "main")
    a = ensure_worktree(repo, root, "run-1", "ws-a")
    b = ensure_worktree(repo, root, "run-1", "ws-b")
    (a.path / "a.txt").write_text("one\ntwo\nthree\nfour\nfive from a\n")
    (b.path / "b.txt").write_text("bee from b\n")
    (b.path / "b-only.txt").write_text("b\n")
    a_sha = commit_all(a, "a")
    b_sha = commit_all(b, "b")

    check_a = merge_check(repo, "main", a.branch)
    assert check_a.clean and check_a.tree and check_a.conflicts == ()
    merged_a = merge_into(repo, "main", a.branch, "merge ws-a")
    assert git(repo, "rev-parse", "main") == merged_a
    assert git(repo, "log", "-1", "--format=%P", merged_a) == f"{start} {a_sha}"

    check_b = merge_check(repo, "main", b.branch)  # checked after the first merge landed
    assert check_b.clean and check_b.target_commit == merged_a
    merged_b = merge_into(repo, "main", b.branch, "merge ws-b")
    assert git(repo, "log", "-1", "--format=%P", merged_b) == f"{merged_a} {b_sha}"
    assert git(repo, "show", "main:b-only.txt") == "b"
    assert git(repo, "show", "main:a.txt").endswith("five from a")
    # main is checked out in the repo: its files and index followed along.
    assert (repo / "b.txt").read_text() == "bee from b\n"
    assert (repo / "a.txt").read_text().endswith("five from a\n")
    assert status(repo) == ""
    # Branches are untouched; merging again is a no-op.
    assert head(a) == a_sha and head(b) == b_sha
    assert merge_into(repo, "main", b.branch, "again") == merged_b


def test_merge_into_a_branch_that_is_not_checked_out(repo, root):
    git(repo, "branch", "integration")
    a = ensure_worktree(repo, root, "run-1", "ws-a")
    (a.path / "x.txt").write_text("x\n")
    commit_all(a, "x")
    before = (repo / "a.txt").read_text()
    merged = merge_into(repo, "integration", a.branch, "merge")
    assert git(repo, "rev-parse", "integration") == merged
    assert not (repo / "x.txt").exists() and (repo / "a.txt").read_text() == before


def test_conflicting_edits_are_reported_and_refused(repo, root):
    a = ensure_worktree(repo, root, "run-1", "ws-a")
    b = ensure_worktree(repo, root, "run-1", "ws-b")
    (a.path / "a.txt").write_text("one\nTWO by a\nthree\nfour\n")
    (b.path / "a.txt").write_text("one\nTWO by b\nthree\nfour\n")
    (b.path / "fine.txt").write_text("no conflict here\n")
    commit_all(a, "a")
    b_sha = commit_all(b, "b")
    # Each alone would merge cleanly.
    assert merge_check(repo, "main", b.branch).clean
    landed = merge_into(repo, "main", a.branch, "merge ws-a")

    check = merge_check(repo, "main", b.branch)
    assert not check.clean and check.tree is None
    assert check.conflicts == ("a.txt",)
    assert "CONFLICT" in check.messages
    with pytest.raises(MergeConflict) as caught:
        merge_into(repo, "main", b.branch, "merge ws-b")
    assert caught.value.conflicts == ("a.txt",)
    assert "a.txt" in str(caught.value)
    # Nothing moved: main, its checkout, and ws-b's branch and worktree.
    assert git(repo, "rev-parse", "main") == landed
    assert status(repo) == ""
    assert git(repo, "rev-parse", b.branch) == b_sha
    assert head(b) == b_sha and status(b.path) == ""


def test_conflict_paths_with_spaces_and_unicode(repo, root):
    a = ensure_worktree(repo, root, "run-1", "ws-a")
    b = ensure_worktree(repo, root, "run-1", "ws-b")
    for wt, who in ((a, "a"), (b, "b")):
        (wt.path / "dir with space" / "c file.txt").write_text(f"rewritten by {who}\n")
        (wt.path / "nöte.txt").write_text(f"{who}\n")
        commit_all(wt, who)
    merge_into(repo, "main", a.branch, "a")
    assert merge_check(repo, "main", b.branch).conflicts == ("dir with space/c file.txt", "nöte.txt")


def test_merge_refuses_when_the_checked_out_target_is_in_the_way(repo, root):
    a = ensure_worktree(repo, root, "run-1", "ws-a")
    (a.path / "a.txt").write_text("from a\n")
    commit_all(a, "a")
    before = git(repo, "rev-parse", "main")

    (repo / "a.txt").write_text("local edit\n")  # unstaged edit to a file the merge changes
    with pytest.raises(TargetDirty):
        merge_into(repo, "main", a.branch, "merge")
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "a.txt").read_text() == "local edit\n"

    git(repo, "checkout", "-q", "--", "a.txt")
    (repo / "b.txt").write_text("staged\n")
    git(repo, "add", "b.txt")  # staged change anywhere
    with pytest.raises(TargetDirty):
        merge_into(repo, "main", a.branch, "merge")
    assert git(repo, "rev-parse", "main") == before

    git(repo, "reset", "-q", "--hard")
    (repo / "b.txt").write_text("unstaged edit elsewhere\n")  # does not block, and is kept
    merged = merge_into(repo, "main", a.branch, "merge")
    assert git(repo, "rev-parse", "main") == merged
    assert (repo / "a.txt").read_text() == "from a\n"
    assert (repo / "b.txt").read_text() == "unstaged edit elsewhere\n"
    assert status(repo) == " M b.txt"


def test_remove_and_recreate(repo, root):
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    (wt.path / "kept.txt").write_text("kept\n")
    sha = commit_all(wt, "keep")
    remove_worktree(wt, delete_branch=False)
    assert not wt.path.exists()
    assert git(repo, "rev-parse", wt.branch) == sha
    assert all(e.ids != ("run-1", "ws-a") for e in list_worktrees(repo))

    again = ensure_worktree(repo, root, "run-1", "ws-a")
    assert again == wt and head(again) == sha
    assert (again.path / "kept.txt").read_text() == "kept\n"

    (repo / "moved.txt").write_text("main moved on\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "moved")
    remove_worktree(again, delete_branch=True)
    remove_worktree(again, delete_branch=True)  # idempotent
    assert subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", wt.branch]).returncode != 0
    fresh = ensure_worktree(repo, root, "run-1", "ws-a")
    assert fresh.base_commit == git(repo, "rev-parse", "main") != wt.base_commit
    assert not (fresh.path / "kept.txt").exists()


def test_worktree_directory_deleted_by_hand_is_recreated(repo, root):
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    (wt.path / "work.txt").write_text("committed work\n")
    sha = commit_all(wt, "work")
    (repo / "moved.txt").write_text("main moved on\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "moved")
    shutil.rmtree(wt.path)
    stale = [e for e in list_worktrees(repo) if e.ids == ("run-1", "ws-a")]
    assert stale and stale[0].prunable is not None

    again = ensure_worktree(repo, root, "run-1", "ws-a")
    assert again == wt
    assert head(again) == sha and again.base_commit == wt.base_commit
    assert (again.path / "work.txt").read_text() == "committed work\n"
    assert status(again.path) == ""


def test_list_worktrees_finds_a_runs_worktrees(repo, root):
    a = ensure_worktree(repo, root, "run-1", "ws-a")
    ensure_worktree(repo, root, "run-1", "ws-b")
    ensure_worktree(repo, root, "run-2", "ws-a")
    entries = list_worktrees(repo)
    assert entries[0].path == repo.resolve() and entries[0].branch == "refs/heads/main"
    assert entries[0].ids is None
    ours = {e.ids: e for e in entries if e.ids}
    assert set(ours) == {("run-1", "ws-a"), ("run-1", "ws-b"), ("run-2", "ws-a")}
    assert ours[("run-1", "ws-a")].path == a.path and ours[("run-1", "ws-a")].head == a.base_commit


def test_path_taken_by_something_else_and_bad_input(repo, root):
    taken = root / "run-1" / "ws-a"
    taken.mkdir(parents=True)
    (taken / "stray.txt").write_text("not a worktree\n")
    with pytest.raises(GitError, match="not an orchestrate worktree"):
        ensure_worktree(repo, root, "run-1", "ws-a")
    with pytest.raises(ValueError):
        ensure_worktree(repo, root, "run-1", "../escape")
    with pytest.raises(GitError) as caught:
        ensure_worktree(repo, root, "run-1", "ws-b", base="no-such-rev")
    assert caught.value.argv[0] == "git" and caught.value.returncode not in (0, None)
    assert "no-such-rev" in str(caught.value)
    # A failed creation records nothing.
    assert not (root / "run-1" / "ws-b").exists()


def test_store_patch_writes_the_content_file_beside_no_index(repo, root, tmp_path):
    wt = ensure_worktree(repo, root, "run-1", "ws-a")
    (wt.path / "ünï.bin").write_bytes(b"\x00\xff" * 10)
    changes = capture_changes(wt, wt.base_commit)
    patches = tmp_path / "state" / "patches"

    written = store_patch(patches, "run-1", "ws-a", "ws-a/build", 1, changes.patch)
    again = store_patch(patches, "run-1", "ws-a", "ws-a/build", 1, b"replaced")

    assert written == again == patches / "run-1" / "ws-a" / "ws-a%2Fbuild.1.patch"
    assert written.read_bytes() == b"replaced"
    assert [p.name for p in written.parent.iterdir()] == [written.name], "no temporary file left"
    assert list((tmp_path / "state").iterdir()) == [patches], "the database row is the record: no index file"
    with pytest.raises(ValueError):
        store_patch(patches, "run-1", "..", "t", 1, b"")


def test_file_change_as_dict():
    change = FileChange("R", "new", "old", 90, 1, 2)
    assert change.as_dict() == {"status": "R", "path": "new", "old_path": "old", "similarity": 90,
                                "added": 1, "deleted": 2, "binary": False}
