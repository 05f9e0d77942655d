"""The ``report`` step of the ``run_tests`` mission: summarise a JUnit XML test report.

Run by the python adapter in the project's directory (``planning.mission_report:summarise_junit``
with the report's path). It prints one line a person reads and returns the counts; it fails
(returns ``False``) only when the report is missing, since failing tests already failed the
step that ran them. A report that is not JUnit XML raises, which fails the step as well.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree

COUNTS = ("tests", "failures", "errors", "skipped")


def junit_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """``{tests, failures, errors, skipped, passed}`` summed over the report's test suites.

    Accepts a ``<testsuites>`` root (pytest's) or a single ``<testsuite>``. Raises
    ``FileNotFoundError`` when the file is absent and ``ValueError`` when it is not a report.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise ValueError(f"{os.fspath(path)} is not XML: {exc}") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuite", "testsuites"):
        raise ValueError(f"{os.fspath(path)} is not a JUnit report (root element <{root.tag}>)")
    totals = dict.fromkeys(COUNTS, 0)
    for suite in suites:
        for key in COUNTS:
            try:
                totals[key] += int(suite.get(key, "0"))
            except ValueError:
                raise ValueError(
                    f"{os.fspath(path)}: <testsuite {key}={suite.get(key)!r}> is not a number"
                ) from None
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    return totals


def summarise_junit(path: str) -> dict[str, int] | bool:
    """Print and return the counts of the JUnit report at ``path``; ``False`` if it is missing."""
    if not os.path.isfile(path):
        print(f"no test report at {path}: the test run did not write one", flush=True)
        return False
    counts = junit_counts(path)
    print(
        f"tests: {counts['tests']}, passed: {counts['passed']}, failures: {counts['failures']}, "
        f"errors: {counts['errors']}, skipped: {counts['skipped']}",
        flush=True,
    )
    print(json.dumps(counts, sort_keys=True), flush=True)
    return counts
