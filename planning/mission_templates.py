"""The mission templates: one pure function per mission type, registered in :data:`TEMPLATES`.

A template reads its params through :class:`~planning.mission_steps.TemplateParams` (every param it
supports, unconditionally, so unknown ones can be told apart) and returns the steps it asks
for, in dependency order. It may ask for more than the limits allow; ``build_workflow``
truncates or, in strict mode, refuses (see :mod:`planning.missions`). It must not read the
clock, the environment or the file system: commands are run later, in the step's ``cwd``.

Adding a mission type is one function and one entry in :data:`TEMPLATES`. Change
:data:`TEMPLATE_VERSION` whenever a template's output changes for the same params.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from types import MappingProxyType

from planning.mission_steps import TemplateFn, TemplateParams, WorkflowStep

TEMPLATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# daily_loop
# --------------------------------------------------------------------------------------------

_SKIPPED_DIRS = (".git", ".venv", "venv", "node_modules")

# (title, command), used in order by check-1, check-2, ...; each exits non-zero on a finding.
# At most MAX_STEPS - 1 checks survive planning (the confirmation comes first), so with four
# entries no built workflow repeats a check; requests beyond are dropped or refused anyway.
DAILY_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "Byte-compile the Python sources",
        r"python3 -m compileall -q -x '(^|/)(\.[^/]+|venv|node_modules)/' .",
    ),
    (
        "No merge-conflict markers",
        "! grep -rnIE '^(<<<<<<<|>>>>>>>)( |$)' "
        + " ".join(f"--exclude-dir={name}" for name in _SKIPPED_DIRS)
        + " .",
    ),
    (
        "No whitespace errors in uncommitted changes",
        "if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then git diff --check; fi",
    ),
    (
        "No file over 5 MB outside .git and virtualenvs",
        "! find . \\( "
        + " -o ".join(f"-name {name}" for name in _SKIPPED_DIRS)
        + " \\) -prune -o -type f -size +5M -print | grep .",
    ),
)

DAILY_SUMMARY = "git status --short 2>/dev/null; git log --oneline -n 10 2>/dev/null; true"


def daily_loop(params: TemplateParams) -> list[WorkflowStep]:
    """A person confirms the day's focus; checks run on the project; a summary; optional review.

    Params: ``focus`` (text in the prompts, default "today's priorities"), ``checks`` (how many
    check steps, default 2), ``project`` (the directory the commands run in, default "."),
    ``review`` (true, or a number of human sign-offs after the summary; default none).
    Steps: ``confirm-priorities`` (human) -> ``check-1`` .. ``check-N`` (in parallel) ->
    ``summary`` -> ``review``, ``review-2``, ... (a chain of sign-offs).
    """
    focus = params.text("focus", "today's priorities")
    checks = params.count("checks", 2)
    project = params.path("project", ".", what="the project directory")
    reviews = params.count_or_flag("review", 0)

    steps = [
        WorkflowStep(
            id="confirm-priorities",
            kind="human",
            title="Confirm today's priorities",
            prompt=(
                f"Confirm today's priorities. Focus: {focus}. "
                f"Approve to run the daily checks in {project}; reject to stop here."
            ),
        )
    ]
    check_ids = []
    for number in range(1, checks + 1):
        title, command = DAILY_CHECKS[(number - 1) % len(DAILY_CHECKS)]
        check_ids.append(f"check-{number}")
        steps.append(
            WorkflowStep(
                id=f"check-{number}",
                kind="runtime",
                title=title,
                command=command,
                depends_on=("confirm-priorities",),
                cwd=project,
                timeout_s=600.0,
            )
        )
    steps.append(
        WorkflowStep(
            id="summary",
            kind="runtime",
            title="Summarise the working tree and recent commits",
            command=DAILY_SUMMARY,
            depends_on=tuple(check_ids) or ("confirm-priorities",),
            cwd=project,
            timeout_s=60.0,
        )
    )
    previous = "summary"
    for number in range(1, reviews + 1):
        step_id = "review" if number == 1 else f"review-{number}"
        steps.append(
            WorkflowStep(
                id=step_id,
                kind="human",
                title="Review the day" if number == 1 else f"Sign-off {number}",
                prompt=(
                    f"Review the daily summary of {project} (focus: {focus}) "
                    f"and approve to close the loop (sign-off {number} of {reviews})."
                ),
                depends_on=(previous,),
            )
        )
        previous = step_id
    return steps


# --------------------------------------------------------------------------------------------
# run_tests
# --------------------------------------------------------------------------------------------

REPORT_FILE = ".orchestrate-report.xml"
REPORT_CALLABLE = "planning.mission_report:summarise_junit"
RUNNERS = ("pytest",)
_QUIET = re.compile(r"^(-q+|--quiet)$")


def run_tests(params: TemplateParams) -> list[WorkflowStep]:
    """Discover, run and summarise the tests of the project at ``target``.

    Params: ``target`` (required: the project directory, where every step runs), ``runner``
    (``pytest``), ``args`` (extra arguments, split like a shell would and quoted back, so they
    can select tests but never add shell syntax; default "-q"), ``timeout_s`` (for the test
    run, default 1800). Steps: ``discover`` lists the test ids, ``execute`` runs them writing a
    JUnit XML report, ``report`` summarises that report (``planning.mission_report``).
    """
    target = params.path("target", what="the path of the project whose tests to run")
    params.choice("runner", "pytest", RUNNERS)
    raw_args = params.text("args", "-q")
    timeout_s = params.seconds("timeout_s", 1800.0)
    try:
        args = shlex.split(raw_args)
    except ValueError as exc:
        raise params.error("args", f"cannot be split into arguments: {exc}") from None
    if any("\0" in arg for arg in args):
        raise params.error("args", "must not contain NUL characters")

    # Discovery always lists test ids (``-q``), whatever quietness the run asks for.
    discover_args = [arg for arg in args if not _QUIET.match(arg)]
    # python3, not python: the project's virtualenv has both, a system without one only python3.
    pytest = ["python3", "-m", "pytest"]
    return [
        WorkflowStep(
            id="discover",
            kind="runtime",
            title=f"Discover the tests of {target}",
            command=shlex.join([*pytest, "--collect-only", "-q", *discover_args]),
            cwd=target,
            timeout_s=300.0,
        ),
        WorkflowStep(
            id="execute",
            kind="runtime",
            title=f"Run the tests of {target}",
            command=shlex.join([*pytest, *args, f"--junitxml={REPORT_FILE}"]),
            depends_on=("discover",),
            cwd=target,
            timeout_s=timeout_s,
            acceptance=(f"test -s {REPORT_FILE}",),
        ),
        WorkflowStep(
            id="report",
            kind="runtime",
            title="Summarise the test report",
            callable=REPORT_CALLABLE,
            args=(REPORT_FILE,),
            depends_on=("execute",),
            cwd=target,
            timeout_s=60.0,
        ),
    ]


TEMPLATES: Mapping[str, TemplateFn] = MappingProxyType(
    {
        "daily_loop": daily_loop,
        "run_tests": run_tests,
    }
)
