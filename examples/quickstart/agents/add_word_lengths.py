"""A stand-in coding agent for the quickstart: it makes the edit a model would have made.

It adds ``word_lengths`` to textstats and a test for it, in whatever checkout it runs in
(the workstream's git worktree). Real agents (aider, codex, claude, gemini) are configured
in router_config.json; see the README.
"""

from pathlib import Path

counting = Path("textstats/counting.py")
counting.write_text(counting.read_text() + '''

def word_lengths(text: str) -> dict[str, int]:
    """Each distinct word with its length."""
    return {word: len(word) for word in word_counts(text)}
''')
Path("tests/test_word_lengths.py").write_text('''from textstats.counting import word_lengths


def test_word_lengths():
    assert word_lengths("a bb bb ccc") == {"a": 1, "bb": 2, "ccc": 3}
''')
print("added word_lengths and its test")
