"""Error signatures, retry backoff, supervision intensity and routing rules."""

import random

from domain.errors import error_signature, normalise_message
from domain.retry import RetryPolicy
from domain.supervision import ChildSpec, Restart, RestartIntensity, should_restart


def test_signatures_ignore_pids_temp_paths_timestamps_and_addresses():
    a = "worker pid 4242 failed at 2026-11-22T10:00:01Z reading /tmp/pytest-1/x.txt at 0x7f00aa"
    b = "worker pid 17 failed at 2026-01-02T03:04:05.123Z reading /tmp/other-9/y.txt at 0x1234"
    assert error_signature("tool_error", a) == error_signature("tool_error", b)
    assert "<tmp>" in normalise_message(a)


def test_different_failures_and_classes_sign_differently():
    assert error_signature("tool_error", "exit code 1") != error_signature("tool_error", "killed by signal")
    assert error_signature("gate", "exit code 1") != error_signature("tool_error", "exit code 1")


def test_backoff_grows_exponentially_up_to_the_cap_with_bounded_jitter():
    policy = RetryPolicy(max_attempts=10, base_delay_s=1.0, factor=2.0, max_delay_s=5.0, jitter=0.1)
    rng = random.Random(7)
    delays = [policy.delay_s(n, rng) for n in range(1, 6)]
    for delay, raw in zip(delays, [1, 2, 4, 5, 5]):
        assert raw <= delay <= raw * 1.1


def test_bad_input_and_cancellation_never_retry():
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(1, "tool_error")
    assert not policy.should_retry(3, "tool_error")
    assert not policy.should_retry(1, "bad_input")
    assert not policy.should_retry(1, "cancelled")


def test_restart_intensity_allows_max_restarts_per_period():
    intensity = RestartIntensity(max_restarts=2, period_s=10)
    assert intensity.allow(0.0) and intensity.allow(1.0)
    assert not intensity.allow(2.0)
    assert intensity.allow(11.5)


def test_liveness_from_heartbeat_age():
    from domain.supervision import HeartbeatPolicy, Liveness, Vitals, liveness

    policy = HeartbeatPolicy(interval_s=0.5, hung_after=4)
    assert liveness(Vitals(0.4), policy) is Liveness.OK
    assert liveness(Vitals(1.2), policy) is Liveness.LATE
    assert liveness(Vitals(2.0), policy) is Liveness.HUNG


def test_restart_backoff_doubles_up_to_the_cap_with_jitter():
    from domain.supervision import restart_delay

    assert [restart_delay(n, 0.1, 1.0, 0.2, 0.0) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert restart_delay(0, 0.1, 1.0, 0.2, 1.0) == 0.1 * 1.2


def test_a_retry_policy_retries_only_the_classes_it_names():
    policy = RetryPolicy(max_attempts=5, retry_on=frozenset({"timeout"}))
    assert policy.should_retry(1, "timeout")
    assert not policy.should_retry(1, "tool_error")
    assert not policy.should_retry(1, "interrupted")


def test_restart_types():
    start = lambda: None  # noqa: E731
    assert should_restart(ChildSpec("a", start, Restart.PERMANENT), abnormal=False)
    assert should_restart(ChildSpec("a", start, Restart.TRANSIENT), abnormal=True)
    assert not should_restart(ChildSpec("a", start, Restart.TRANSIENT), abnormal=False)
    assert not should_restart(ChildSpec("a", start, Restart.TEMPORARY), abnormal=True)
