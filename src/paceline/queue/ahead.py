"""How far ahead of its free handler slots a worker claims: by Little's law, from the rate at
which its handlers start.

A claim is a round trip and a transaction. With PACELINE_CONCURRENCY handler slots and short
handlers (milliseconds or less), claiming only for the free slots makes every claim carry a
handful of jobs, and the round trips, not the handlers, bound the drain: the default
concurrency of 8 drained a third as fast as a tuned pgqueuer. Raising the concurrency fixes
the drain but runs that many handlers at once, which is wrong for handlers that call a
rate-limited API or take a second each.

So the two are decoupled: at most PACELINE_CONCURRENCY handlers run at once, always, and the
worker claims `ahead` more jobs that wait in its memory for a free slot. `ahead` is the number
of jobs that start, at the rate handlers have been starting, within the longer of
AHEAD_SECONDS and two claims' time (Little's law: a queue of rate x wait jobs waits that long
on average). Two claims' time, because the next claim goes out when half of them have
started: the rest keep the handlers busy while it is in flight. So a claimed job waits a few
milliseconds for its handler, whatever the handlers do: one-second handlers at concurrency 8
start 8 a second, which makes `ahead` 0 (the claim is what it was), and handlers that take
microseconds get claims of up to MAX_AHEAD more. A job that waits holds its lease, which the
lease keeper renews; its start is recorded at the claim, so the recorded start is that wait
earlier than its handler's, which `paceline_job_handler_wait_seconds` shows per replica.
"""

from __future__ import annotations

import time

# How long a job claimed ahead waits for a handler slot, on average: small against the
# lateness a user notices, large against a claim's round trip (so a claim carries many jobs).
AHEAD_SECONDS = 0.005
# At most this many jobs wait in one worker's memory (a claim returns at most
# PACELINE_CONCURRENCY + MAX_AHEAD jobs).
MAX_AHEAD = 256
# The start rate is a moving average over roughly the last 1 / _WEIGHT starts. An interval is
# counted as at most _LONGEST_GAP: after an idle minute, the rate recovers within a few dozen
# starts instead of thousands.
_WEIGHT = 0.05
_LONGEST_GAP = 1.0


class ClaimAhead:
    """Follows the rate at which handlers start; `jobs()` is how many to claim ahead."""

    def __init__(self) -> None:
        self._last_start: float | None = None
        self._interval = _LONGEST_GAP  # seconds between starts, a moving average
        self._claim_seconds = 0.0  # how long a claim statement takes, a moving average

    def started(self) -> None:
        """A handler starts now."""
        now = time.monotonic()
        if self._last_start is not None:
            gap = min(now - self._last_start, _LONGEST_GAP)
            self._interval += _WEIGHT * (gap - self._interval)
        self._last_start = now

    def claimed(self, seconds: float) -> None:
        """A claim statement took `seconds`."""
        self._claim_seconds += _WEIGHT * (seconds - self._claim_seconds)

    def jobs(self) -> int:
        """How many jobs to claim beyond the free handler slots."""
        rate = 1.0 / max(self._interval, 1e-6)
        return min(MAX_AHEAD, int(rate * max(AHEAD_SECONDS, 2 * self._claim_seconds)))
