"""The JSON API's request and response shapes, declared once as msgspec types.

`POST /jobs` bodies are decoded and checked with them (paceline.web.validation), the OpenAPI
document's schemas are generated from them (paceline.web.openapi), and a test holds
`Job.to_json` and the client's `Job` to the `Job` view here. Names and bounds come from
paceline.contract, which the standalone client imports too.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from paceline.contract import (
    DEFAULT_KIND,
    INT64_MAX,
    INT64_MIN,
    KIND_PATTERN,
    MAX_APPENDED,
    MAX_BACKLOG_LIMIT,
    MAX_BATCH,
    MAX_IDEMPOTENCY_KEY,
    MAX_LIMIT_CHANGES_SHOWN,
    MAX_PAGE,
    MAX_PAYLOAD_BYTES,
    MAX_PER_WINDOW,
    MAX_RUNNING_LIMIT,
    MAX_WINDOW_SECONDS,
    MIN_WINDOW_SECONDS,
    NOT_BEFORE_MAX_SECONDS,
    NOT_BEFORE_PATTERN,
    OnBusyName,
)
from paceline.queue.jobs import Status

# JSON Schema's `format` is only an annotation; the bounds make int64 a constraint.
Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX, extra_json_schema={"format": "int64"})]
JobId = Annotated[int, Meta(ge=1, le=INT64_MAX, extra_json_schema={"format": "int64"})]
# isoformat() in UTC with a `Z`, microseconds when there are any.
UTC_TIME_SCHEMA: Final = {"format": "date-time"}
UtcTime = Annotated[str, Meta(pattern="Z$", extra_json_schema=UTC_TIME_SCHEMA)]
IdempotencyKey = Annotated[
    str, Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY, pattern="^[!-~]+$")
]
# Where a page of GET /jobs ended: the last job's id on one server; `<id>.<its created_at in
# microseconds since 1970>` on a Citus cluster, which lists by (created_at, id) (docs/citus.md).
Cursor = Annotated[str, Meta(pattern=r"^[1-9][0-9]{0,18}(\.-?[0-9]{1,19})?$")]
Kind = Annotated[
    str,
    Meta(
        pattern=KIND_PATTERN,
        description="Which handler runs the job (PACELINE_HANDLER for `default`, "
        "PACELINE_HANDLERS for the others); the rate window is per (kind, object_id).",
    ),
]
# A payload is decoded later (paceline.web.validation): any JSON value, kept as its text. Its
# schema (PAYLOAD_VALUE below) says what PostgreSQL's jsonb can keep.
Payload = Annotated[
    msgspec.Raw | msgspec.UnsetType,
    Meta(
        description=f"Any JSON value, at most {MAX_PAYLOAD_BYTES} bytes as compact JSON "
        "(413 past it), handed to the handler; stored as jsonb (a key written twice keeps "
        "its last value; no string may hold U+0000, which jsonb cannot store; numbers fit a "
        "64-bit float, integers any size). Null or absent: no payload.",
        extra_json_schema={"$ref": "{PayloadValue}"},
    ),
]
# Any JSON value whose strings (keys included) have no U+0000, the one thing jsonb refuses.
_NO_NUL = {"type": "string", "pattern": "^[^\\u0000]*$"}
PAYLOAD_VALUE: Final[dict[str, Any]] = {
    "description": "A JSON value PostgreSQL's jsonb can keep: no U+0000 in any string.",
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        _NO_NUL,
        {"type": "array", "items": {"$ref": "{PayloadValue}"}},
        {
            "type": "object",
            "propertyNames": _NO_NUL,
            "additionalProperties": {"$ref": "{PayloadValue}"},
        },
    ],
}
_ON_BUSY_DESCRIPTION = (
    "When the (kind, object)'s window is busy: queue (wait for the next free slot), coalesce "
    "(return its pending job, 200), reject (429 with Retry-After), replace (its last pending "
    "job takes this payload, 200), append (its last pending job adds this payload to its list, "
    f"200; past {MAX_APPENDED} payloads or {MAX_PAYLOAD_BYTES} bytes a new job is made). "
    "Null or absent: PACELINE_ON_BUSY (default queue)."
)


NOT_BEFORE_DESCRIPTION: Final = (
    "The earliest start the client wants: an ISO 8601 date-time with an offset (Z or +02:00) "
    "or UNIX seconds, before the year 9000. The job takes its key's first free slot at or after "
    "it, without holding up the key's other jobs. Null or absent: as soon as the limit allows."
)
NotBefore = Annotated[
    Annotated[
        str,
        Meta(pattern=NOT_BEFORE_PATTERN, extra_json_schema={"format": "date-time"}),
    ]
    | Annotated[float, Meta(ge=0, lt=NOT_BEFORE_MAX_SECONDS)]
    | None,
    Meta(description=NOT_BEFORE_DESCRIPTION),
]


class JobRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Integers may be written with a zero fraction or an exponent (768.0, 7.68e2 are 768),
    as JSON Schema's `integer` allows; 768.5, strings and booleans are refused, and so are
    duplicate keys and NaN/Infinity."""

    object_id: Int64
    on_busy: Annotated[OnBusyName | None, Meta(description=_ON_BUSY_DESCRIPTION)] = None
    max_backlog: Annotated[
        Annotated[int, Meta(ge=1, le=MAX_BACKLOG_LIMIT)] | None,
        Meta(
            description="Refuse (429) when the (kind, object) already has this many pending "
            "jobs; null: no cap."
        ),
    ] = None
    kind: Annotated[Kind | None, Meta(description=f"Null or absent: `{DEFAULT_KIND}`.")] = None
    payload: Payload = msgspec.UNSET
    not_before: NotBefore = None


class BatchItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One job of a batch: its object, kind and payload. Every job of a batch queues: the other
    on_busy policies decide on their key's state one request at a time."""

    object_id: Int64
    kind: Annotated[Kind | None, Meta(description=f"Null or absent: `{DEFAULT_KIND}`.")] = None
    payload: Payload = msgspec.UNSET
    on_busy: Annotated[
        Literal["queue"] | None, Meta(description="Only queue (or null) in a batch.")
    ] = None
    not_before: NotBefore = None


JobBatch = Annotated[
    list[BatchItem],
    Meta(
        min_length=1,
        max_length=MAX_BATCH,
        description="Many jobs in one statement, in request order, all or none; an object "
        "repeated in the batch gets slots a window apart, as if sent one by one. An "
        "Idempotency-Key covers the whole batch.",
    ),
]


class Job(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A job as the API shows it; every field is always there, null until it has a value."""

    id: JobId
    kind: Kind
    object_id: Int64
    status: Status
    timestamp: Annotated[
        int,
        Meta(
            ge=INT64_MIN,
            le=INT64_MAX,
            extra_json_schema={"format": "int64"},
            description="Whole UNIX seconds (floored) when it was created: the original "
            "service's integer column. `created_at` has the precise instant.",
        ),
    ]
    created_at: Annotated[UtcTime, Meta(description="When it was accepted (UTC, microseconds).")]
    duration: Annotated[
        Annotated[float, Meta(ge=0)] | None,
        Meta(description="Seconds its last run took; null until it finished."),
    ]
    run_at: Annotated[
        UtcTime | None,
        Meta(
            description="Its reserved slot (UTC): it never starts before this. Null while its "
            "kind or object is paused: it gets a slot when they are resumed."
        ),
    ]
    started_at: UtcTime | None
    finished_at: UtcTime | None
    attempts: Annotated[
        int,
        Meta(
            ge=0,
            description="Every attempt of the job's life, also those before a retry by hand "
            "(POST /jobs/{job_id}/retry): the number of its latest attempt.",
        ),
    ]
    error: Annotated[str | None, Meta(description="Why the last attempt failed.")]
    payload: Annotated[
        Any,
        Meta(
            description="What the client sent (on_busy=append: the list of every payload "
            "the job absorbed, in arrival order); null if none."
        ),
    ]
    result: Annotated[
        Any,
        Meta(description="What the handler returned (JSON); null until it succeeded, or if none."),
    ]
    not_before: Annotated[
        UtcTime | None, Meta(description="The earliest start the client chose, if any.")
    ]
    attempts_at_retry: Annotated[
        int,
        Meta(
            ge=0,
            description="`attempts` when the job was last retried by hand (0: never). "
            "PACELINE_MAX_ATTEMPTS counts the attempts since: `attempts - attempts_at_retry`.",
        ),
    ]


class JoinedJob(Job, frozen=True):
    """A job a request joined: its (kind, object)'s pending job (coalesced), or replayed."""

    coalesced: Annotated[
        bool,
        Meta(
            description="True: on_busy=coalesce returned the key's pending job, or replace / "
            "append changed its payload."
        ),
    ] = False


class CreatedJobs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The jobs of a batch, in request order."""

    jobs: list[Job]


class RetriedJobs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What POST /jobs/retry did, or with dry_run would do."""

    retried: Annotated[int, Meta(ge=0, description="How many jobs went back to PENDING.")]
    first_run_at: Annotated[
        UtcTime | None,
        Meta(
            description="The earliest of their new slots; null if none was retried, or all "
            "wait for a paused kind or object."
        ),
    ]
    last_run_at: Annotated[UtcTime | None, Meta(description="The latest of their new slots.")]
    dry_run: Annotated[bool, Meta(description="True: nothing was written.")]


class JobPage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One page of GET /jobs, newest first."""

    jobs: Annotated[list[Job], Meta(max_length=MAX_PAGE)]
    next_cursor: Annotated[
        Cursor | None,
        Meta(description="Pass as `cursor` for the next page; null on the last one."),
    ]


# Limits (GET / PUT / DELETE /limits/...): a kind's, or one (kind, object)'s override.

WindowSeconds = Annotated[
    float,
    Meta(
        ge=MIN_WINDOW_SECONDS,
        le=MAX_WINDOW_SECONDS,
        description="W: the length of the sliding window, in seconds.",
    ),
]
PerWindow = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_PER_WINDOW,
        description="N: no interval of length W holds more than N starts of one (kind, object).",
    ),
]
MaxRunning = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_RUNNING_LIMIT,
        description="M: at most M jobs of one (kind, object) run at once.",
    ),
]


class LimitRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of PUT /limits/{kind}[/objects/{object_id}]: it replaces the row. A field null
    or absent is inherited (an override's from its kind, a kind's from `default`); the
    `default` kind inherits from nothing, so there a field null or absent keeps its value."""

    window: WindowSeconds | None = None
    limit: PerWindow | None = None
    max_running: MaxRunning | None = None


class LimitSet(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a row of its own sets (null: inherited)."""

    window: WindowSeconds | None
    limit: PerWindow | None
    max_running: MaxRunning | None
    paused: bool


class Limit(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A kind's limit, or a (kind, object)'s: the numbers in force and what its own row sets."""

    kind: Kind
    window: WindowSeconds
    limit: PerWindow
    max_running: MaxRunning
    paused: Annotated[bool, Meta(description="Nothing of it starts (its kind's or its own pause).")]
    set: Annotated[
        LimitSet | None,
        Meta(description="Its own row; null: everything is inherited."),
    ]
    updated_at: Annotated[UtcTime | None, Meta(description="When its own row last changed.")]
    object_id: Int64 | msgspec.UnsetType = msgspec.UNSET


class SlotMove(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One pending job whose slot a change moves (null: waits for a resume)."""

    id: JobId
    object_id: Int64
    before: UtcTime | None
    after: UtcTime | None


class LimitChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a change did, or with ?dry_run=true would do (then nothing is written)."""

    limit: Limit
    dry_run: bool
    moved: Annotated[int, Meta(ge=0, description="How many pending jobs' slots moved.")]
    changes: Annotated[
        list[SlotMove],
        Meta(
            max_length=MAX_LIMIT_CHANGES_SHOWN,
            description=f"The first {MAX_LIMIT_CHANGES_SHOWN} moves, in slot order per key.",
        ),
    ]


class LimitList(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """GET /limits: every kind with a limit of its own, and the kinds the replicas run."""

    limits: list[Limit]


class OverridePage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """GET /limits/{kind}/objects: a kind's overrides in object order."""

    overrides: Annotated[list[Limit], Meta(max_length=MAX_PAGE)]
    next_cursor: Annotated[
        Int64 | None,
        Meta(description="Pass as `after` for the next page; null on the last one."),
    ]


# What the page reads (GET /overview, /objects/{object_id}/timeline, /workers), the probes'
# answer and the problem document. Open shapes: members may be added, so none forbids them.

NullableUtcTime = UtcTime | None


class QueuedJob(msgspec.Struct, frozen=True):
    """A pending job the overview points at (the first slot, the oldest wait)."""

    id: JobId
    kind: Kind
    object_id: Int64
    created_at: UtcTime
    run_at: Annotated[NullableUtcTime, Meta(description="Null while its key is paused.")]


class Replica(msgspec.Struct, frozen=True):
    """A process with workers, as its heartbeat row says."""

    id: Annotated[str, Meta(extra_json_schema={"format": "uuid"})]
    host: str
    pid: int
    concurrency: int
    running: int
    started_at: UtcTime
    last_heartbeat: UtcTime
    alive: Annotated[bool, Meta(description="A heartbeat within the last 15 s.")]


class Count(msgspec.Struct, frozen=True):
    """Jobs of one status; `exact` counts stop at `count_cap` (`capped`)."""

    count: Annotated[int, Meta(ge=0)] | None
    exact: bool
    capped: bool


class LastMinutes(msgspec.Struct, frozen=True):
    """Jobs finished per minute and status, oldest minute first (and totals per status)."""

    minutes: int
    per_minute: list[dict[str, Any]]


class Overview(msgspec.Struct, frozen=True):
    """The whole queue now, on the database's clock."""

    now: Annotated[UtcTime, Meta(description="The database's clock.")]
    counts: Annotated[
        dict[str, Count],
        Meta(
            description="Per status: exact for PENDING and PROCESSING (up to `count_cap`), "
            "estimated from table statistics for the finished ones (null: not known yet)."
        ),
    ]
    due: Annotated[int, Meta(ge=0, description="Past their slot, not started.")]
    waiting: Annotated[int, Meta(ge=0, description="Slot still ahead.")]
    first_due: QueuedJob | None
    oldest_pending: QueuedJob | None
    last_minutes: LastMinutes
    recent_failures: list[dict[str, Any]]
    replicas: list[Replica]
    count_cap: int | msgspec.UnsetType = msgspec.UNSET
    finished_estimate: int | msgspec.UnsetType | None = msgspec.UNSET


class WaitingJob(msgspec.Struct, frozen=True):
    """A pending job of the object, with `wait`: why it waits (its window, a running job, a
    pause, its not_before, the jobs before it, a free worker)."""

    id: JobId
    run_at: Annotated[NullableUtcTime, Meta(description="Null while its key is paused.")]
    wait: dict[str, Any]


class Run(msgspec.Struct, frozen=True):
    """A start of the object, with `gap` seconds since the one before."""

    job_id: JobId
    attempt: int
    started_at: UtcTime


class Timeline(msgspec.Struct, frozen=True):
    """One (kind, object)'s runs and reserved slots."""

    kind: Kind
    object_id: Int64
    window: float
    now: UtcTime
    last_start: NullableUtcTime
    next_free_slot: NullableUtcTime
    waiting: Annotated[
        list[WaitingJob], Meta(description="Pending jobs in the order they will start.")
    ]
    waiting_total: Annotated[int, Meta(ge=0)]
    runs: Annotated[list[Run], Meta(description="Starts newest first.")]


class Health(msgspec.Struct, frozen=True):
    """A probe's answer."""

    status: str


class InvalidParam(msgspec.Struct, frozen=True):
    """Which field or parameter was wrong, and why."""

    name: str
    reason: str


class Problem(msgspec.Struct, frozen=True):
    """RFC 9457; more members may follow (extensions)."""

    type: Annotated[
        str, Meta(extra_json_schema={"format": "uri-reference", "default": "about:blank"})
    ]
    title: str
    status: Annotated[int, Meta(ge=400, le=599)]
    detail: Annotated[str, Meta(min_length=1, description="A sentence for humans.")]
    invalid_params: list[InvalidParam] | msgspec.UnsetType = msgspec.UNSET


# The shapes the OpenAPI document names that are not structs (a struct is named by itself).
NAMED: Final[dict[str, Any]] = {"JobBatch": JobBatch}
STRUCTS: Final = (
    JobRequest,
    BatchItem,
    Job,
    JoinedJob,
    CreatedJobs,
    JobPage,
    RetriedJobs,
    Status,
    LimitRequest,
    Limit,
    LimitChange,
    LimitList,
    OverridePage,
    Overview,
    Timeline,
    Replica,
    Health,
    Problem,
)


def json_schemas(ref_template: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the schemas of `NAMED`, the components every shape refers to), for OpenAPI."""
    types = [*NAMED.values(), *STRUCTS]
    schemas, components = msgspec.json.schema_components(types, ref_template=ref_template)
    components["PayloadValue"] = PAYLOAD_VALUE
    # The payload's schema refers to PayloadValue, a schema msgspec does not generate.
    payload_ref = ref_template.format(name="PayloadValue")
    encoded = msgspec.json.encode(components).replace(
        b'"{PayloadValue}"', f'"{payload_ref}"'.encode()
    )
    return dict(zip(NAMED, schemas, strict=False)), msgspec.json.decode(encoded)


def schema(kind: Any, ref_template: str) -> dict[str, Any]:
    """The JSON Schema of one type (refs to components written with `ref_template`)."""
    (found,), _ = msgspec.json.schema_components([kind], ref_template=ref_template)
    return found
