"""Unit tests for proxy.drain.rotation: jittered budgets and when a connection is due to rotate."""

from __future__ import annotations

import math
import random

import pytest

from proxy.drain.rotation import RotationPolicy, rotation_reason

DRAWS = 1000


def policy(max_requests: int = 0, max_age_s: float = 0.0, jitter: float = 0.0,
           seed: int = 1234) -> RotationPolicy:
    return RotationPolicy(max_requests=max_requests, max_age_s=max_age_s, jitter=jitter,
                          rng=random.Random(seed))


@pytest.mark.parametrize(
    ("n", "jitter", "low", "high"),
    [(1000, 0.1, 900, 1100), (1000, 0.5, 500, 1500), (100, 0.2, 80, 120), (10, 0.3, 7, 13),
     # Non-integer bounds: rounding may reach the nearest whole number past them.
     (7, 0.1, 6, 8)],
)
def test_request_budget_within_jitter_bounds(n: int, jitter: float, low: int,
                                             high: int) -> None:
    rotation = policy(max_requests=n, jitter=jitter)
    budgets = [rotation.request_budget() for _ in range(DRAWS)]
    assert all(isinstance(b, int) for b in budgets)
    assert low <= min(budgets) and max(budgets) <= high
    assert len(set(budgets)) > 1
    mean = sum(budgets) / DRAWS
    assert abs(mean - n) < n * jitter / 4  # uniform around N, not skewed to one side


@pytest.mark.parametrize("n", [1, 2, 1000])
def test_request_budget_without_jitter_is_exact(n: int) -> None:
    rotation = policy(max_requests=n, jitter=0.0)
    assert {rotation.request_budget() for _ in range(DRAWS)} == {n}


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5])
def test_request_budget_zero_means_unlimited(jitter: float) -> None:
    rotation = policy(max_requests=0, jitter=jitter)
    assert {rotation.request_budget() for _ in range(DRAWS)} == {0}


@pytest.mark.parametrize("jitter", [0.1, 0.49, 0.5])
def test_request_budget_never_below_one(jitter: float) -> None:
    rotation = policy(max_requests=1, jitter=jitter)
    budgets = {rotation.request_budget() for _ in range(DRAWS)}
    assert min(budgets) >= 1
    assert budgets <= {1, 2}


class Extreme(random.Random):
    """A random source whose ``uniform`` always returns one end of the range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(
    ("n", "jitter", "high", "budget"),
    [(1, 0.5, False, 1),  # round(0.5) == 0 must still give 1
     (1, 0.5, True, 2), (1000, 0.1, False, 900), (1000, 0.1, True, 1100), (10, 0.5, False, 5)],
)
def test_request_budget_at_the_ends_of_the_range(n: int, jitter: float, high: bool,
                                                 budget: int) -> None:
    rotation = RotationPolicy(max_requests=n, max_age_s=60.0, jitter=jitter, rng=Extreme(high))
    assert rotation.request_budget() == budget
    factor = 1 + jitter if high else 1 - jitter
    assert rotation.expiry(10.0) == pytest.approx(10.0 + 60.0 * factor)


def test_request_budget_is_reproducible_from_the_seed() -> None:
    first = policy(max_requests=1000, jitter=0.1, seed=7)
    second = policy(max_requests=1000, jitter=0.1, seed=7)
    assert [first.request_budget() for _ in range(50)] == [
        second.request_budget() for _ in range(50)]


@pytest.mark.parametrize(("opened_at", "jitter"), [(0.0, 0.3), (1234.5, 0.0), (50.0, 0.5)])
def test_expiry_disabled_is_infinite(opened_at: float, jitter: float) -> None:
    rotation = policy(max_age_s=0.0, jitter=jitter)
    assert rotation.expiry(opened_at) == math.inf


@pytest.mark.parametrize(
    ("age", "jitter", "opened_at"), [(60.0, 0.1, 1000.0), (5.0, 0.5, 0.0), (300.0, 0.25, 7.5)]
)
def test_expiry_within_jitter_bounds(age: float, jitter: float, opened_at: float) -> None:
    rotation = policy(max_age_s=age, jitter=jitter)
    expiries = [rotation.expiry(opened_at) for _ in range(DRAWS)]
    assert min(expiries) >= opened_at + age * (1 - jitter)
    assert max(expiries) <= opened_at + age * (1 + jitter)
    assert len(set(expiries)) > 1


def test_expiry_without_jitter_is_exact() -> None:
    rotation = policy(max_age_s=60.0, jitter=0.0)
    assert {rotation.expiry(100.0) for _ in range(10)} == {160.0}


@pytest.mark.parametrize(
    ("served", "budget", "expires_at", "now", "reason"),
    [(1, 0, math.inf, 1e9, None),  # both limits off
     (10**6, 0, math.inf, 0.0, None),
     (4, 5, math.inf, 0.0, None),
     (5, 5, math.inf, 0.0, "max_requests"),
     (6, 5, math.inf, 0.0, "max_requests"),
     (1, 0, 100.0, 99.9, None),
     (1, 0, 100.0, 100.0, "max_age"),
     (1, 0, 100.0, 150.0, "max_age"),
     (5, 5, 100.0, 150.0, "max_requests"),  # both reached: the request budget is named
     (1, 1, 100.0, 0.0, "max_requests")],
)
def test_rotation_reason(served: int, budget: int, expires_at: float, now: float,
                         reason: str | None) -> None:
    assert rotation_reason(served, budget, expires_at, now) == reason
