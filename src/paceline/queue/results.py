"""What a handler returned, as the JSON text its job keeps (`result`), within the size limit."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from paceline.contract import MAX_PAYLOAD_BYTES
from paceline.queue.jobs import Job

log = logging.getLogger(__name__)

# An escaped NUL (`\u0000` after an even number of backslashes): JSON allows it, PostgreSQL's
# jsonb does not (its text type cannot hold NUL), and one such value would fail the whole
# statement that records a batch of outcomes.
ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_escaped_nul(encoded: bytes) -> bool:
    """Whether JSON text holds an escaped NUL. The substring test first: the regex has no fixed
    text to search for, so alone it tries a match at every byte (53 µs per KiB, most of the
    cost of a payload; benchmarks/README.md), while `in` is a fast scan."""
    return b"\\u0000" in encoded and ESCAPED_NUL.search(encoded) is not None


def encode_result(value: Any, *, job: Job) -> str | None:
    """`value` as compact JSON text, or None when there is nothing to keep: the handler returned
    None, or something that is not JSON (then the attempt still succeeds: the work is done, and
    running it again would not change what it returns; the log says why it was dropped)."""
    if value is None:
        return None
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        _dropped(job, f"it is not JSON-encodable ({exc})")
        return None
    if len(encoded) > MAX_PAYLOAD_BYTES:
        _dropped(job, f"it is {len(encoded)} bytes as JSON, over {MAX_PAYLOAD_BYTES}")
        return None
    if has_escaped_nul(encoded):
        _dropped(job, "it holds a NUL character, which PostgreSQL's jsonb cannot store")
        return None
    return encoded.decode()


def _dropped(job: Job, why: str) -> None:
    log.warning(
        "job %d: its handler's result is not kept: %s",
        job.id,
        why,
        extra={"job_id": job.id, "kind": job.kind, "object_id": job.object_id},
    )
