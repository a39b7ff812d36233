"""Delivery throttles: per relay and per destination domain, per second and per hour.

A throttle never blocks the event loop and never counts as a delivery attempt: ``take`` either
grants a slot at once (0.0) or says how long until one is free, and the sender decides to wait a
moment or to put the message back in the queue until then. Large providers throttle senders that
exceed their announced rates with 4xx replies (RFC 5321 §4.2.1 allows them to); staying under the
rate keeps those retries, and the reputation damage, away.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

Monotonic = Callable[[], float]


class TokenBucket:
    """``rate`` per second, with a burst of one second's worth (at least one); 0 is unlimited."""

    def __init__(self, rate: float, clock: Monotonic = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def wait_time(self) -> float:
        """Seconds until one token is available (0.0: available now); takes nothing."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        if self.rate > 0:
            self.tokens -= 1


class HourWindow:
    """At most ``limit`` messages in any sliding hour; 0 is unlimited."""

    def __init__(self, limit: int, clock: Monotonic = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.sent: deque[float] = deque()

    def wait_time(self) -> float:
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        while self.sent and now - self.sent[0] >= 3600:
            self.sent.popleft()
        return 0.0 if len(self.sent) < self.limit else 3600 - (now - self.sent[0])

    def take(self) -> None:
        if self.limit > 0:
            self.sent.append(self.clock())


class Throttle:
    """The relay's limits and one pair of limits per destination domain.

    ``take`` is all-or-nothing across the relay's and the domain's limits, so a message that has
    to wait consumes no slot anywhere. It is synchronous: the sender's workers share one event
    loop, so no lock is needed.
    """

    def __init__(
        self,
        *,
        per_second: float = 0.0,
        per_hour: int = 0,
        per_domain_per_second: float = 0.0,
        per_domain_per_hour: int = 0,
        clock: Monotonic = time.monotonic,
    ) -> None:
        self.clock = clock
        self.relay = (TokenBucket(per_second, clock), HourWindow(per_hour, clock))
        self.per_domain_per_second = per_domain_per_second
        self.per_domain_per_hour = per_domain_per_hour
        self.domains: dict[str, tuple[TokenBucket, HourWindow]] = {}
        # Messages put back per domain in this pass, to spread their next attempts at the rate.
        self.backlog: dict[str, int] = {}

    @property
    def relay_per_second(self) -> float:
        return self.relay[0].rate

    def _domain(self, recipient: str) -> tuple[str, tuple[TokenBucket, HourWindow]]:
        domain = recipient.rpartition("@")[2].lower()
        limits = self.domains.get(domain)
        if limits is None:
            limits = (TokenBucket(self.per_domain_per_second, self.clock),
                      HourWindow(self.per_domain_per_hour, self.clock))
            self.domains[domain] = limits
        return domain, limits

    def relay_wait(self) -> float:
        return max(limit.wait_time() for limit in self.relay)

    def domain_wait(self, recipient: str) -> float:
        return max(limit.wait_time() for limit in self._domain(recipient)[1])

    def take(self, recipient: str) -> None:
        """Count one message against the relay's and its domain's limits."""
        for limit in (*self.relay, *self._domain(recipient)[1]):
            limit.take()

    def put_back(self, recipient: str, wait: float) -> float:
        """Seconds after which a message put back now should be tried again.

        Successive messages to one busy domain are spread at the domain's rate instead of all
        coming back at the same instant, only for all but one to be put back again.
        """
        domain, _ = self._domain(recipient)
        ahead = self.backlog.get(domain, 0)
        self.backlog[domain] = ahead + 1
        rate = self.per_domain_per_second
        return wait + (ahead / rate if rate > 0 else 0.0)

    def new_pass(self) -> None:
        self.backlog.clear()
        # Forget the domains whose limits are back to rest (full bucket, nothing sent within the
        # hour): they would be recreated identical. A 40,000-recipient bulletin reaches thousands
        # of domains; keeping each forever grew the daemon's memory with every fan-out.
        idle = [domain for domain, (bucket, window) in self.domains.items()
                if bucket.wait_time() == 0.0 and bucket.tokens >= bucket.capacity
                and window.wait_time() == 0.0 and not window.sent]
        for domain in idle:
            del self.domains[domain]
