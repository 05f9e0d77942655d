"""What tasks read and write, hashed (adapters.files): globs, directories, and a remembered hash
that never outlives a change to the file, even one that keeps its size and its mtime."""

from __future__ import annotations

import hashlib
import os

import pytest

from adapters import files
from adapters.files import hash_files, sha256_file


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def remember_at_once(monkeypatch):
    """Every file counts as settled: its hash is remembered the first time it is read."""
    monkeypatch.setattr(files, "_SETTLED_NS", -(10 ** 18))
    monkeypatch.setattr(files, "_remembered", {})


def test_globs_and_directories_expand_to_every_file_below_and_empty_patterns_are_named(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_bytes(b"a")
    (tmp_path / "src" / "pkg" / "b.py").write_bytes(b"b")
    hashes, empty = hash_files(str(tmp_path), ["src/**/*.py", "src/pkg", "missing/*.txt"])
    assert hashes == {"src/a.py": _sha(b"a"), os.path.join("src", "pkg", "b.py"): _sha(b"b")}
    assert empty == ["missing/*.txt"]


def test_a_remembered_hash_follows_a_rewrite_that_keeps_size_and_mtime(tmp_path, remember_at_once):
    path = tmp_path / "data.txt"
    path.write_bytes(b"first")
    before = os.stat(path)
    assert sha256_file(str(path)) == _sha(b"first")
    assert sha256_file(str(path)) == _sha(b"first")  # from memory: nothing changed
    path.write_bytes(b"other")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime: only ctime tells
    assert sha256_file(str(path)) == _sha(b"other")


def test_a_file_replaced_by_another_is_read_again(tmp_path, remember_at_once):
    path = tmp_path / "data.txt"
    path.write_bytes(b"one")
    assert sha256_file(str(path)) == _sha(b"one")
    replacement = tmp_path / "new.txt"
    replacement.write_bytes(b"two")
    os.replace(replacement, path)
    assert sha256_file(str(path)) == _sha(b"two")


def test_a_file_changed_just_now_is_never_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_remembered", {})
    path = tmp_path / "fresh.txt"
    path.write_bytes(b"x")
    sha256_file(str(path))
    assert str(path) not in files._remembered, "written within the clock's granularity: not trusted"
