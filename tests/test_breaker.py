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
    assert b.capacity() == 0


def test_after_the_reset_timeout_exactly_one_probe_is_admitted():
    b = breaker(max_failures=1, reset_timeout_s=10)
    b.failed(0, "x")
    assert b.due(9.9) is None
    assert b.due(10).state is CircuitState.HALF_OPEN
    assert b.capacity() == 1
    b.started()
    assert b.capacity() == 0


def test_a_successful_probe_closes_the_circuit():
    b = breaker(max_failures=1, reset_timeout_s=10)
    b.failed(0, "x")
    b.due(10)
    b.started()
    assert b.succeeded().state is CircuitState.CLOSED
    assert b.capacity() is None, "closed: only the adapter's own limit applies"


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


def test_an_end_that_says_nothing_of_the_tool_lets_the_next_probe_in():
    b = breaker(max_failures=1, reset_timeout_s=10)
    b.failed(0, "x")
    b.due(10)
    b.started()
    assert b.released() is None
    assert b.state is CircuitState.HALF_OPEN and b.capacity() == 1


def test_released_changes_nothing_when_closed():
    b = breaker(max_failures=2)
    b.failed(0, "x")
    assert b.released() is None and b.failures == 1 and b.capacity() is None
