"""Carrying files into a worktree (adapters/worktree_setup.py): what `copy` globs match, what
`link` refuses, and that nothing but paths is ever reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapters.worktree_setup import SetupError, carry_into
from domain.ports import PortBlock


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_copy_globs_match_hidden_files_and_directories_keep_modes_and_report_the_unmatched(tmp_path):
    repo = tree(tmp_path / "repo", {".env": "A=1\n", "config/local.toml": "x", "config/dev/.secrets": "s",
                                     ".git/config": "never", "notes.txt": "n"})
    (repo / ".env").chmod(0o600)
    work = tmp_path / "wt"
    work.mkdir()
    carried = carry_into(repo, work, [".env", "config/**", "*.missing"], [])
    assert carried.copied == (".env", "config/dev/.secrets", "config/local.toml")
    assert carried.unmatched == ("*.missing",)
    assert (work / "config" / "dev" / ".secrets").read_text() == "s"
    assert oct((work / ".env").stat().st_mode & 0o777) == oct(0o600)
    assert not (work / ".git").exists() and not (work / "notes.txt").exists()
    # carried again (a resumed run): replaced, not duplicated
    (repo / ".env").write_text("A=2\n")
    assert carry_into(repo, work, [".env"], []).copied == (".env",)
    assert (work / ".env").read_text() == "A=2\n"


def test_links_point_at_the_repositorys_directory_and_are_idempotent(tmp_path):
    repo = tree(tmp_path / "repo", {".venv/bin/python": "#!", "node_modules/x/index.js": ""})
    work = tmp_path / "wt"
    work.mkdir()
    first = carry_into(repo, work, [], [".venv", "node_modules"])
    again = carry_into(repo, work, [], [".venv", "node_modules"])
    assert first.linked == again.linked == (".venv", "node_modules")
    assert os.readlink(work / ".venv") == str((repo / ".venv").resolve())
    assert first.private == (".venv", "node_modules")


def test_a_link_to_nothing_or_over_a_tracked_directory_is_refused_saying_what_to_do(tmp_path):
    repo = tree(tmp_path / "repo", {"src/a.py": ""})
    work = tree(tmp_path / "wt", {"src/a.py": ""})
    with pytest.raises(SetupError, match=r"link '\.venv': .* does not exist in the repository; create it"):
        carry_into(repo, work, [], [".venv"])
    with pytest.raises(SetupError, match=r"link 'src': the worktree already has src \(tracked by git\?\)"):
        carry_into(repo, work, [], ["src"])
    with pytest.raises(SetupError, match=r"must be a path inside the repository"):
        carry_into(repo, work, ["../outside"], [])


def test_a_port_block_says_its_environment():
    assert PortBlock(20010, 5).environment() == (("ORCHESTRATE_PORT_BASE", "20010"), ("ORCHESTRATE_PORT_COUNT", "5"))
    assert PortBlock(20010, 5).overlaps(PortBlock(20014, 1)) and not PortBlock(20010, 5).overlaps(PortBlock(20015, 1))
