"""Whether a response ends its connection: keep-alive rotation, the drain, the client.

Clients that hold keep-alive connections stay pinned to the pods they first
reached, so pods added by an autoscaler get no traffic.  Like nginx's
``keepalive_requests``, the response that exhausts a connection's budget
carries ``Connection: close``; the client finishes that request normally and
opens a new connection, which the Service balances afresh.  No request fails.

Each connection's budget is drawn uniformly in ``[N(1-F), N(1+F)]`` (the same for
age), so connections opened together do not all rotate in the same instant.
Whether a given response closes its connection is decided in one place,
``client_state.ClientMachine.close_decision`` (client wish, framing, drain, and the
rotation reason from here).  Sans-IO: the random source and the clock are passed in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Draws per-connection budgets; 0 disables a limit."""

    max_requests: int
    max_age_s: float
    jitter: float
    rng: random.Random

    def request_budget(self) -> int:
        """Requests this connection may serve; 0 means unlimited."""
        if self.max_requests == 0:
            return 0
        low = self.max_requests * (1 - self.jitter)
        high = self.max_requests * (1 + self.jitter)
        return max(1, round(self.rng.uniform(low, high)))

    def expiry(self, opened_at: float) -> float:
        """The time after which this connection's next response closes it."""
        if self.max_age_s == 0:
            return math.inf
        return opened_at + self.max_age_s * self.rng.uniform(1 - self.jitter, 1 + self.jitter)


def rotation_reason(served: int, budget: int, expires_at: float, now: float) -> str | None:
    """Why the response completing ``served`` requests must close, if it must."""
    if budget and served >= budget:
        return "max_requests"
    if now >= expires_at:
        return "max_age"
    return None
