"""The mutation score per module, from ``mutmut results --all true`` on stdin.

Killed means a test failed; a timeout counts as killed too (the mutant made the code loop, which
the suite notices). Survived, "no tests" (no selected test reaches the function) and suspicious
count as not killed. Survivors are listed so each can be judged.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "segfault"}


def main() -> int:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[str] = []
    for line in sys.stdin:
        name, _, status = line.strip().rpartition(": ")
        if not name.startswith("domain."):
            continue
        module = name.split(".")[1]
        verdict = "killed" if status in KILLED else "alive"
        counts[module][verdict] += 1
        if verdict == "alive":
            survivors.append(f"{status}: {name}")
    for survivor in survivors:
        print(survivor)
    for module, count in sorted(counts.items()):
        total = count["killed"] + count["alive"]
        print(f"code   domain/{module + '.py':<17} killed {count['killed']:4}/{total:<4} {100 * count['killed'] / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
