"""Circuit breaker changes as a person and the run core see them: which adapter, what state,
why, and when the next probe may go; with an explicit clock."""

from __future__ import annotations

from domain.breaker import BreakerChange, BreakerPolicy, CircuitBreaker, CircuitState


def opened(max_failures=1, reset_timeout_s=10.0, **policy) -> CircuitBreaker:
    b = CircuitBreaker("aider", BreakerPolicy(max_failures=max_failures, reset_timeout_s=reset_timeout_s, **policy))
    for _ in range(max_failures):
        b.failed(0.0, "down")
    return b


def test_every_change_names_its_adapter_state_reason_and_next_probe_time():
    b = CircuitBreaker("aider", BreakerPolicy(max_failures=2, reset_timeout_s=10))
    b.failed(0.0, "first")
    assert b.failed(1.0, "no route to host") == BreakerChange(
        "aider", CircuitState.OPEN, "2 consecutive failures, last: no route to host", 11.0)
    assert b.due(11.0) == BreakerChange("aider", CircuitState.HALF_OPEN, "reset timeout elapsed: admitting one probe")
    b.started()
    assert b.failed(12.0, "still down") == BreakerChange("aider", CircuitState.OPEN, "probe failed: still down", 32.0)
    b.due(32.0)
    b.started()
    assert b.succeeded() == BreakerChange("aider", CircuitState.CLOSED, "probe succeeded")


def test_a_circuit_that_closed_again_forgets_its_longer_reset_timeout():
    b = opened(reset_timeout_s=10, backoff_factor=3)
    b.due(10.0)
    b.started()
    b.failed(10.0, "still down")  # reopens for 30s
    b.due(40.0)
    b.started()
    b.succeeded()
    assert b.failed(50.0, "down again").retry_at == 60.0


def test_a_closed_circuit_admits_any_number_once_its_probe_succeeded():
    b = opened()
    b.due(10.0)
    b.started()
    b.succeeded()
    b.started()
    b.started()
    assert b.capacity() is None
    assert b.failed(20.0, "x").state is CircuitState.OPEN and b.capacity() == 0


def test_an_open_circuit_is_not_due_before_its_time_and_a_closed_one_never():
    assert CircuitBreaker("aider", BreakerPolicy()).due(1e9) is None
    b = opened(reset_timeout_s=10)
    assert b.due(9.99) is None and b.state is CircuitState.OPEN


def test_a_success_while_closed_is_no_change_but_clears_the_count():
    b = CircuitBreaker("aider", BreakerPolicy(max_failures=2))
    b.failed(0.0, "x")
    assert b.succeeded() is None
    assert b.failed(1.0, "x") is None and b.state is CircuitState.CLOSED
