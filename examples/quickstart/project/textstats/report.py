"""Steps the quickstart plan calls through the python adapter."""

import importlib
import json
import pkgutil
from pathlib import Path

import textstats


def import_all() -> list[str]:
    """Import every module of the package; raises if any fails to import."""
    names = [m.name for m in pkgutil.iter_modules(textstats.__path__) if m.name != "__main__"]
    for name in names:
        importlib.import_module(f"textstats.{name}")
    return names


def write_summary(counts_path: str, summary_path: str) -> str:
    """Turn the JSON word counts into a short Markdown summary."""
    counts = json.loads(Path(counts_path).read_text(encoding="utf-8"))
    lines = [f"# Word report", "", f"{counts['words']} words. Most frequent:", ""]
    lines += [f"- {word}: {count}" for word, count in counts["top"]]
    Path(summary_path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary_path
