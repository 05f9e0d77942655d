"""textstats: a tiny sample project that the quickstart plan builds, checks and reports on."""

from textstats.counting import top_words, word_counts

__all__ = ["top_words", "word_counts"]
