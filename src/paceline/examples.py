"""Two small handlers for trying kinds, payloads and results (the README's example):

    PACELINE_HANDLERS="words=paceline.examples:count_words,digest=paceline.examples:digest"

What a handler returns is kept as the job's `result`.
"""

from __future__ import annotations

import hashlib

from paceline.queue.errors import PermanentFailure
from paceline.queue.jobs import Job


async def count_words(job: Job) -> dict[str, int]:
    """`{"text": "..."}` → `{"words": n}`."""
    text = _text(job)
    return {"words": len(text.split())}


async def digest(job: Job) -> dict[str, str]:
    """`{"text": "..."}` → `{"sha256": "<hex>"}`."""
    return {"sha256": hashlib.sha256(_text(job).encode()).hexdigest()}


def _text(job: Job) -> str:
    payload = job.payload
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        # Retrying cannot fix the payload: fail at once, saying why.
        raise PermanentFailure('the payload must be {"text": "<a string>"}')
    return text
