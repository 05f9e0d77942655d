from textstats import top_words, word_counts


def test_counts_are_case_insensitive():
    assert word_counts("The the THE cat")["the"] == 3


def test_top_words_break_ties_alphabetically():
    assert top_words("b a c a b", n=2) == [("a", 2), ("b", 2)]


def test_empty_text_has_no_words():
    assert top_words("") == []
