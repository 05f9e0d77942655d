"""``python -m textstats FILE``: print the word counts of FILE as JSON."""

import json
import sys

from textstats.counting import top_words, word_counts

with open(sys.argv[1], encoding="utf-8") as handle:
    text = handle.read()
json.dump({"words": sum(word_counts(text).values()), "top": top_words(text)}, sys.stdout, indent=2)
print()
