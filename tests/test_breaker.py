"""Circuit breaker semantics, with an explicit clock."""

from domain.breaker import BreakerPolicy, CircuitBreaker, CircuitState


def breaker(**policy):
    return CircuitBreaker("tool", BreakerPolicy(**policy))


def test_it_opens_after_n_consecutive_failures_and_success_resets_the_count():
    b = breaker(max_failures=3, reset_timeout_s=10)
    assert b.failed(0, "x") is None and b.failed(1, "x") is None
    assert b.succeeded() is None
    assert b.failed(2, "x") is None and b.failed(3, "x") is None
    change = b.failed(4, "boom")
    assert change.state is CircuitState.OPEN and "3 consecutive failures" in change.reason
    assert change.retry_at == 14
    assert b.capacity(5, 4) == 0


def test_after_the_reset_timeout_exactly_one_probe_is_admitted():
    b = breaker(max_failures=1, reset_timeout_s=10)
    b.failed(0, "x")
    assert b.due(9.9) is None
    assert b.due(10).state is CircuitState.HALF_OPEN
    assert b.capacity(10, 4) == 1
    b.started()
    assert b.capacity(10, 4) == 0


def test_a_successful_probe_closes_the_circuit():
    b = breaker(max_failures=1, reset_timeout_s=10)
    b.failed(0, "x")
    b.due(10)
    b.started()
    assert b.succeeded().state is CircuitState.CLOSED
    assert b.capacity(11, 4) == 4


def test_a_failed_probe_reopens_with_an_exponentially_longer_timeout_up_to_the_cap():
    b = breaker(max_failures=1, reset_timeout_s=10, backoff_factor=2, max_reset_timeout_s=30)
    b.failed(0, "x")
    b.due(10)
    b.started()
    assert b.failed(10, "y").retry_at == 30
    b.due(30)
    b.started()
    assert b.failed(30, "y").retry_at == 60
    b.due(60)
    b.started()
    assert b.failed(60, "y").retry_at == 90
    assert b.opened_times == 4
