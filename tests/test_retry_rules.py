"""Retry decisions for each error class, and a task's retry settings as its policy."""

from __future__ import annotations

import random

import pytest

from domain.errors import ErrorClass
from domain.plan import TaskSpec
from domain.retry import RetryPolicy

TRIED_AGAIN = {ErrorClass.TRANSIENT, ErrorClass.TIMEOUT, ErrorClass.CRASH, ErrorClass.GATE, ErrorClass.TOOL_ERROR,
               ErrorClass.COMMAND_FAILED, ErrorClass.RESOURCE_LIMIT}
# Trying again cannot change these: the input, a person's decision or a merge must change first.
NEVER = {ErrorClass.BAD_INPUT, ErrorClass.CANCELLED, ErrorClass.REJECTED, ErrorClass.MERGE}


@pytest.mark.parametrize("error_class", sorted(TRIED_AGAIN))
def test_by_default_a_failure_of_the_task_or_its_tool_is_tried_again(error_class):
    assert RetryPolicy(max_attempts=2).should_retry(1, error_class)


@pytest.mark.parametrize("error_class", sorted(NEVER))
def test_some_failures_are_never_retried_even_when_the_task_asks_for_them(error_class):
    assert not RetryPolicy(max_attempts=5).should_retry(1, error_class)
    assert not RetryPolicy(max_attempts=5, retry_on=frozenset(ErrorClass)).should_retry(1, error_class)


def test_an_interrupted_attempt_is_not_a_retry_by_default_since_it_is_requeued_without_cost():
    assert not RetryPolicy(max_attempts=5).should_retry(1, ErrorClass.INTERRUPTED)


def test_every_error_class_has_a_stated_default():
    assert TRIED_AGAIN | NEVER | {ErrorClass.INTERRUPTED} == set(ErrorClass)


def test_the_last_allowed_attempt_is_not_followed_by_another():
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(2, ErrorClass.CRASH)
    assert not policy.should_retry(3, ErrorClass.CRASH)


def test_a_task_retry_settings_become_its_policy():
    spec = TaskSpec(workstream_id="w", id="t", tool="shell", command="true", max_attempts=4, backoff_s=2.0,
                    max_backoff_s=5.0, retry_jitter=0.0, retry_on=("gate",))
    policy = RetryPolicy.for_task(spec)
    assert (policy.max_attempts, policy.base_delay_s, policy.max_delay_s, policy.jitter) == (4, 2.0, 5.0, 0.0)
    assert policy.retry_on == {"gate"}
    assert [policy.delay_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 5.0]


def test_a_task_that_names_no_classes_retries_the_default_ones_and_has_at_least_one_attempt():
    spec = TaskSpec(workstream_id="w", id="t", tool="shell", command="true", max_attempts=0)
    policy = RetryPolicy.for_task(spec)
    assert policy.max_attempts == 1
    assert policy.retry_on == TRIED_AGAIN


def test_jitter_only_ever_lengthens_the_delay_by_at_most_its_fraction():
    policy = RetryPolicy(base_delay_s=10.0, jitter=0.5)

    class Highest(random.Random):
        def uniform(self, a, b):
            return b

    assert policy.delay_s(1, Highest()) == 15.0
    assert RetryPolicy(base_delay_s=10.0, jitter=0.0).delay_s(1) == 10.0
