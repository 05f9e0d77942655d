"""Mutation testing of the module-level tables that mutmut 3 leaves alone.

mutmut 3 mutates only inside functions, yet much of the decision logic is data: the state
machines' transition tables, the terminal and failure state sets, the never-retried error
classes, the breaker-evidence classes. This drops one element at a time from every set literal
at module level of the given modules and runs the pure tests against each mutant, in a copy
of the tree (so the checkout is never modified). A mutant is killed when the tests fail.

Usage: python bench/mutate_tables.py MODULE.py ... -- PYTEST_ARGS...
Prints one line per survivor and a score per module; exits 0 whatever the score.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("actors", "adapters", "cli", "control", "domain", "messages", "persistence", "planning", "schema",
          "bin", "docs", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    module: str  # path relative to the root
    line: int
    description: str
    source: str  # the whole mutated module


def _module_level_sets(tree: ast.Module) -> list[ast.Set]:
    """Set literals in module-level statements; those inside functions are mutmut's."""
    found: list[ast.Set] = []
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        found += [node for node in ast.walk(statement) if isinstance(node, ast.Set)]
    return found


def mutants_of(module: str) -> list[Mutant]:
    text = (ROOT / module).read_text()
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def position(lineno: int, col: int) -> int:
        return offsets[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    result = []
    for node in _module_level_sets(ast.parse(text)):
        start, end = position(node.lineno, node.col_offset), position(node.end_lineno, node.end_col_offset)
        for index, element in enumerate(node.elts):
            kept = [ast.get_source_segment(text, e) for i, e in enumerate(node.elts) if i != index]
            # An empty ``{}`` would be a dict: ``set()`` keeps the type.
            replacement = "{" + ", ".join(kept) + "}" if kept else "set()"
            removed = ast.get_source_segment(text, element)
            result.append(Mutant(module, element.lineno, f"drop {removed}",
                                 text[:start] + replacement + text[end:]))
    return result


def _copy_tree(into: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", ".work"))
        elif source.exists():
            shutil.copy2(source, into / name)


def _killed(mutant: Mutant, tree: Path, pytest_args: list[str]) -> bool:
    target = tree / mutant.module
    original = target.read_text()
    target.write_text(mutant.source)
    try:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        completed = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", *pytest_args],
            cwd=tree, env=env, capture_output=True, text=True, check=False,
        )
        return completed.returncode != 0
    finally:
        target.write_text(original)


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    modules, pytest_args = argv[:split], argv[split + 1:]
    mutants = [m for module in modules for m in mutants_of(module)]
    workers = max(1, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="mutate-tables-") as scratch:
        trees = [Path(scratch) / f"tree{i}" for i in range(workers)]
        for tree in trees:
            _copy_tree(tree)
        # Each worker owns one copy of the tree, so two mutants never share a file.
        chunks = [mutants[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(workers) as pool:
            verdicts = pool.map(lambda pair: [(m, _killed(m, pair[1], pytest_args)) for m in pair[0]],
                                zip(chunks, trees))
            results = [item for chunk in verdicts for item in chunk]
    for mutant, killed in sorted(results, key=lambda r: (r[0].module, r[0].line)):
        if not killed:
            print(f"survived: {mutant.module}:{mutant.line}: {mutant.description}")
    for module in modules:
        mine = [killed for m, killed in results if m.module == module]
        if mine:
            print(f"tables {module:<24} killed {sum(mine):4}/{len(mine):<4} {100 * sum(mine) / len(mine):5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
