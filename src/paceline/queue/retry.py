"""The retry policy: what happens to a job whose attempt ended with an error.

The decision alone, with no database and no clock, so it can be tested by itself (as
procrastinate's `retry.py` and River's `retry_policy.go` are): the worker asks it, then writes
what it says.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable

from paceline.queue.errors import PermanentFailure, RetryLater

# Retries never wait longer than this, however many attempts came before.
MAX_BACKOFF = 3600.0


class Action(enum.Enum):
    """What becomes of the job."""

    FAIL = "FAIL"
    RETRY = "RETRY"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """FAIL, or RETRY after `delay` seconds."""

    action: Action
    delay: float = 0.0


FAIL = Decision(Action.FAIL)


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, up to `max_attempts` attempts in all.

    The first retry waits `backoff` seconds (PACELINE_RETRY_BACKOFF), doubling with every
    attempt, each times a random factor in [1 - jitter, 1 + jitter], and never more than
    `max_backoff`. A handler's `RetryLater(delay)` is honoured as it is; `PermanentFailure`, or
    an error in the last attempt (RetryLater too), fails the job.
    """

    max_attempts: int
    backoff: float
    max_backoff: float = MAX_BACKOFF
    jitter: float = 0.5
    # Draws the jitter factor: uniform(low, high). Tests pass a fixed one.
    uniform: Callable[[float, float], float] = random.uniform

    def decide(self, attempt: int, error: BaseException) -> Decision:
        """What to do after attempt number `attempt` (1 for the first) ended with `error`.

        `attempt` counts from the job's last retry by hand (`Job.attempts_since_retry`): a
        retried job gets `max_attempts` again."""
        if isinstance(error, PermanentFailure) or attempt >= self.max_attempts:
            return FAIL
        if isinstance(error, RetryLater):
            return Decision(Action.RETRY, error.delay)
        return Decision(Action.RETRY, self.backoff_after(attempt))

    def backoff_after(self, attempt: int) -> float:
        """The wait before the attempt after `attempt`, for an ordinary error."""
        exponential = self.backoff * 2.0 ** (attempt - 1)
        factor: float = self.uniform(1 - self.jitter, 1 + self.jitter)
        return min(exponential * factor, self.max_backoff)
