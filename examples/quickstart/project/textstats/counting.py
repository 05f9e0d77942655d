import re
from collections import Counter

_WORD = re.compile(r"[a-z']+")


def word_counts(text: str) -> Counter:
    """Lower-cased word frequencies of ``text``."""
    return Counter(_WORD.findall(text.lower()))


def top_words(text: str, n: int = 5) -> list[tuple[str, int]]:
    """The ``n`` most frequent words, ties broken alphabetically."""
    return sorted(word_counts(text).items(), key=lambda item: (-item[1], item[0]))[:n]
