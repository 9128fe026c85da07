"""The API's vocabulary and bounds, in the standard library alone.

The request and response shapes (`paceline.shapes`, msgspec), the request validation, the
OpenAPI document, the settings and the standalone client (`paceline.client`, which needs only
aiohttp and this module) all take their names and numbers from here, so none can drift.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, get_args

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

# What a request wants when its (kind, object)'s window is busy.
OnBusyName = Literal["queue", "coalesce", "reject", "replace", "append"]
ON_BUSY_VALUES: Final[tuple[OnBusyName, ...]] = get_args(OnBusyName)


class OnBusy(enum.StrEnum):
    """What a request wants when its object's window is busy."""

    QUEUE = "queue"  # wait for the next free slot
    COALESCE = "coalesce"  # join the object's pending job, if it has one
    REJECT = "reject"  # refuse with 429 and Retry-After
    REPLACE = "replace"  # give its pending job this payload (latest wins)
    APPEND = "append"  # add this payload to its pending job's list of payloads


# The enum and the literal type are one list, spelled twice only because a type checker needs
# each spelled out; this refuses to import if they ever differ.
if tuple(OnBusy) != ON_BUSY_VALUES:  # pragma: no cover
    raise ImportError(f"OnBusy {tuple(OnBusy)} differs from OnBusyName {ON_BUSY_VALUES}")

# A job's states, as the API writes them (paceline.queue.jobs.Status has the same values).
StatusName = Literal["PENDING", "PROCESSING", "SUCCESS", "FAILED", "CANCELLED"]
STATUS_VALUES: Final[tuple[StatusName, ...]] = get_args(StatusName)
# A job in one of these states will not change any more.
FINISHED: Final[frozenset[StatusName]] = frozenset({"SUCCESS", "FAILED", "CANCELLED"})

# Refuse a job when its object already has this many pending (the largest cap one may ask).
MAX_BACKLOG_LIMIT: Final = 1_000_000
# Jobs in one batch POST (a JSON array), inserted in one statement.
MAX_BATCH: Final = 1000
# GET /jobs: jobs per page, by default and at most.
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 500
# The Idempotency-Key header: 1 to this many visible ASCII characters.
MAX_IDEMPOTENCY_KEY: Final = 255

# A job's kind routes it to its handler; the rate window is per (kind, object_id).
DEFAULT_KIND: Final = "default"
KIND_PATTERN: Final = r"^[a-z0-9_.-]{1,64}$"
# A payload (and a result), encoded as compact JSON, holds at most this many bytes.
MAX_PAYLOAD_BYTES: Final = 64 * 1024
# An appending job (on_busy=append) absorbs at most this many payloads (and MAX_PAYLOAD_BYTES
# in all); the next request past either starts a new job in the next free slot.
MAX_APPENDED: Final = 1000

# A job's not_before (POST /jobs): an instant before the year 9000 (ISO 8601 with an offset, or
# UNIX seconds), so a slot a few windows after it is still a time PostgreSQL and Python hold.
NOT_BEFORE_MAX_SECONDS: Final = 221_845_392_000  # 9000-01-01T00:00:00Z
NOT_BEFORE_PATTERN: Final = r"^[0-8][0-9]{3}-"
# A limit (PUT /limits/...): a window from a millisecond to ten years, 1 to a million starts
# per window, 1 to 10,000 running at once.
MIN_WINDOW_SECONDS: Final = 0.001
MAX_WINDOW_SECONDS: Final = 10 * 366 * 24 * 3600.0
MAX_PER_WINDOW: Final = 1_000_000
MAX_RUNNING_LIMIT: Final = 10_000
# A change's answer lists this many moved slots at most (and says how many moved in all).
MAX_LIMIT_CHANGES_SHOWN: Final = 1000

# What a token may do (PACELINE_TOKENS): `submit` creates jobs and reads them by id, `read`
# reads everything (the pages, /metrics), `admin` does everything.
ScopeName = Literal["submit", "read", "admin"]
SCOPE_VALUES: Final[tuple[ScopeName, ...]] = get_args(ScopeName)
# The shortest token paceline accepts: anything shorter is guessable by brute force.
MIN_TOKEN_LENGTH: Final = 16
