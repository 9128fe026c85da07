"""How often the page's sign-in may be tried: a token bucket per client address and one for
everyone, in this process.

Every attempt counts, right or wrong, so a guesser learns nothing from which attempts are
refused. The buckets live in memory: each replica throttles on its own (N replicas behind a
balancer allow N times the rate), and a restart forgets them. The address is the peer's as
paceline sees it; behind a reverse proxy every visitor shares the proxy's, so the per-address
bucket then acts as a second global one.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

# Per address: 5 attempts, then one every 12 s (5 a minute).
PER_ADDRESS_BURST = 5
PER_ADDRESS_RATE = 5 / 60
# Everyone together: 30 attempts, then one a second (60 a minute).
GLOBAL_BURST = 30
GLOBAL_RATE = 1.0
# Addresses remembered; past this the least recently seen is forgotten (it gets a full
# bucket again, but the global bucket still holds).
MAX_ADDRESSES = 10_000


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBucket:
    """`burst` attempts at once, refilled at `rate` per second."""

    def __init__(self, *, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate

    def new(self, now: float) -> _Bucket:
        return _Bucket(self.burst, now)

    def refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
        bucket.updated = now

    def wait(self, bucket: _Bucket) -> float:
        """Seconds until the (refilled) bucket holds one attempt; 0 if it does now."""
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate


class SignInThrottle:
    """Decides whether a sign-in attempt from an address may go ahead now."""

    def __init__(
        self,
        *,
        per_address: TokenBucket | None = None,
        overall: TokenBucket | None = None,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_address = per_address or TokenBucket(
            burst=PER_ADDRESS_BURST, rate=PER_ADDRESS_RATE
        )
        self._overall = overall or TokenBucket(burst=GLOBAL_BURST, rate=GLOBAL_RATE)
        self._clock = clock
        self._max_addresses = max_addresses
        self._addresses: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._everyone = self._overall.new(clock())

    def attempt(self, address: str) -> float:
        """Take one attempt for `address`: 0 if it may go ahead, else the seconds to wait
        (nothing is taken then)."""
        now = self._clock()
        bucket = self._addresses.pop(address, None) or self._per_address.new(now)
        self._addresses[address] = bucket  # most recently seen last
        while len(self._addresses) > self._max_addresses:
            self._addresses.popitem(last=False)
        self._per_address.refill(bucket, now)
        self._overall.refill(self._everyone, now)
        wait = max(self._per_address.wait(bucket), self._overall.wait(self._everyone))
        if wait > 0:
            return wait
        bucket.tokens -= 1
        self._everyone.tokens -= 1
        return 0.0
