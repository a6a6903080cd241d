"""Per-service request rate limit (EAS's ``metadata.rpc.rate_limit``): a token bucket.

``rate`` tokens per second, holding at most ``burst`` (one second's worth, at least 1), so a
service limited to 10 requests/s takes a burst of 10 and then 10 per second. A request takes one
token; without one it is answered 429 with ``Retry-After`` (whole seconds until the next token,
at least 1) and never reaches a replica. Pure arithmetic on the ``now`` it is given: the proxy
passes its loop's clock, tests a fake one. Standard library only.
"""

from __future__ import annotations

import math


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float = -math.inf, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        self.rate = rate  # tokens per second
        self.burst = burst if burst is not None else max(1.0, rate)  # tokens
        self.tokens = self.burst  # a fresh bucket is full
        self.stamp = now  # when `tokens` was last brought up to date, seconds (-inf: not yet used)

    def take(self, now: float) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there will be one."""
        if now > self.stamp:
            self.tokens = self.burst if self.stamp == -math.inf else min(
                self.burst, self.tokens + (now - self.stamp) * self.rate
            )
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
