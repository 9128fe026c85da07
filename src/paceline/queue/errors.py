"""What a handler raises to tell the worker what to do with the job.

A leaf module (it imports nothing of paceline), so that handlers, the webhook handler and the
retry policy can all use it without importing each other. `paceline.queue.handlers` re-exports
both, as the README documents.
"""

from __future__ import annotations


class RetryLater(Exception):
    """Raise from a handler to run this job again no sooner than `delay` seconds from now.

    For an upstream that said "not now" (HTTP 429/503 with Retry-After): the attempt ends, the
    job goes back to PENDING at now + delay (and its object's window), and the object's later
    jobs move back with it. Counts as an attempt against PACELINE_MAX_ATTEMPTS.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay:g}s")
        self.delay = max(0.0, delay)
        self.reason = reason


class PermanentFailure(Exception):
    """Raise from a handler when retrying cannot help (e.g. HTTP 400): FAILED at once."""
