#!/usr/bin/env bash
# Mutation testing of the pure decision modules (domain/), against the fast pure tests only.
#
# Two tools, because mutmut 3 mutates only inside functions: mutmut for the code, and
# bench/mutate_tables.py for the module-level tables (transition tables, terminal/failure state
# sets, never-retried error classes) where a dropped element is a real change of behaviour.
# Which modules and tests mutmut uses is [tool.mutmut] in pyproject.toml; keep TESTS in step.
# The run starts from scratch (mutants/ removed) so a result never comes from a stale cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODULES=(domain/run_core.py domain/outcomes.py domain/retry.py domain/breaker.py domain/states.py
         domain/routing.py domain/scheduling.py)
TESTS=$($PY -c 'import tomllib; c = tomllib.load(open("pyproject.toml", "rb"))["tool"]["mutmut"]; print(" ".join(c["pytest_add_cli_args_test_selection"] + c["pytest_add_cli_args"]))')
OUT=mutants/score.txt

rm -rf mutants
$PY -m mutmut run >/dev/null 2>&1 || { echo "mutmut run failed; run '.venv/bin/mutmut run' to see why" >&2; exit 1; }
{
  $PY -m mutmut results --all true 2>/dev/null | $PY bench/mutation_score.py
  # shellcheck disable=SC2086  # TESTS is a word list on purpose
  $PY bench/mutate_tables.py "${MODULES[@]}" -- $TESTS
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
grep -v '^code \|^tables ' "$OUT" || true
grep '^code \|^tables ' "$OUT"
