"""Reading requests strictly: anything unexpected is a clear 4xx, before the database is touched."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, cast

import msgspec
from aiohttp import web

from paceline import contract
from paceline.contract import (
    DEFAULT_KIND,
    INT64_MAX,
    INT64_MIN,
    KIND_PATTERN,
    MAX_PAYLOAD_BYTES,
    OnBusyName,
)
from paceline.queue.jobs import NewJob, PageEnd, Status, parse_page_cursor
from paceline.queue.results import has_escaped_nul
from paceline.shapes import BatchItem, JobBatch, JobRequest
from paceline.web.problems import Problem, invalid, not_found

__all__ = [
    "JobBody",
    "JobRequest",
    "check_json_content_type",
    "dry_run_param",
    "int_param",
    "json_integer",
    "object_id_value",
    "parse_idempotency_key",
    "parse_job_id",
    "parse_jobs_body",
    "parse_json",
    "parse_list_query",
    "parse_object_id",
    "parse_retry_query",
    "read_body",
    "refuse_repeated_keys",
    "refuse_unknown_params",
]

# A job request is a few bytes; a body still arriving after this long is a slow-loris, not a
# client, and it must not keep a connection (and memory) forever.
BODY_TIMEOUT = 10.0
JOB_FIELDS = frozenset(JobRequest.__struct_fields__)
# "object_id, on_busy and max_backlog", in the order JobRequest declares them.
_JOB_FIELD_NAMES = " and ".join(
    (", ".join(JobRequest.__struct_fields__[:-1]), JobRequest.__struct_fields__[-1])
)
_BATCH_FIELDS = frozenset(BatchItem.__struct_fields__)
# The shapes decode a well-formed body in one pass; anything they refuse, or that they could
# have read differently from the rules below, is read again by the rules, which say why.
_DECODER: Final = msgspec.json.Decoder(JobRequest | JobBatch)
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# A JSON number whose most significant digit is further out than this is no int64.
_MAX_INTEGER_DIGITS = 20
FILTER_PARAMS = frozenset({"kind", "object_id", "status", "payload"})
LIST_PARAMS = FILTER_PARAMS | {"limit", "cursor"}
RETRY_PARAMS = FILTER_PARAMS | {"dry_run"}
_PAYLOAD_EXAMPLE = 'a JSON object the payloads must contain, e.g. payload={"customer":42}'

_KIND = re.compile(KIND_PATTERN)
_NOT_BEFORE = re.compile(contract.NOT_BEFORE_PATTERN)

_EXAMPLE = 'send {"object_id": <integer>}'


@dataclasses.dataclass(frozen=True, slots=True)
class JobBody:
    """A single job's POST /jobs body, checked: the job and the policy it asks for."""

    new: NewJob
    on_busy: OnBusyName | None = None
    max_backlog: int | None = None


class _PayloadOf(msgspec.Struct):
    """Only the payload of a job (other fields ignored): its exact JSON text."""

    payload: msgspec.Raw = msgspec.Raw(b"null")


_PAYLOADS: Final = msgspec.json.Decoder(_PayloadOf | list[_PayloadOf])


def check_json_content_type(content_type: str) -> None:
    """Only JSON bodies are read; a form post or text is refused, not guessed at."""
    if content_type != "application/json":
        shown = content_type or "none"
        raise Problem(
            415,
            "Unsupported media type",
            f"The body must be application/json (got {shown}); {_EXAMPLE}.",
        )


async def read_body(request: web.Request) -> bytes:
    """The request body, refused if it trickles in slower than a client with a job should."""
    if request.content.is_eof():
        # All of it came with the headers (a job is a few dozen bytes): nothing to wait for,
        # so no timer to arm and cancel on every POST.
        return await request.read()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except TimeoutError:
        raise Problem(
            408,
            "Request timeout",
            f"The body did not arrive within {BODY_TIMEOUT:g} seconds; nothing was written.",
            headers={"Connection": "close"},
        ) from None


def parse_jobs_body(body: bytes) -> JobBody | list[NewJob]:
    """A `POST /jobs` body: one job request, or a batch (a JSON array of jobs)."""
    try:
        decoded = _DECODER.decode(body)
    except msgspec.DecodeError:  # ValidationError included
        pass
    else:
        # The decoder keeps the last of duplicate keys, which are refused here. Once it has
        # decoded, the only strings in the body are its keys, the names of on_busy and kind
        # (no quote in them) and the payloads' own, so one quote pair more than those is a key
        # written twice.
        if isinstance(decoded, JobRequest):
            if body.count(b'"') == _quotes(decoded):
                return JobBody(
                    NewJob(
                        decoded.object_id,
                        decoded.kind or DEFAULT_KIND,
                        payload_json(decoded.payload),
                        not_before_value(decoded.not_before),
                    ),
                    decoded.on_busy,
                    decoded.max_backlog,
                )
        elif body.count(b'"') == sum(map(_quotes, decoded)):
            # The item's not_before name is formatted only for an item that has one: 1000
            # f-strings per plain batch were a tenth of this function's time.
            return [
                NewJob(
                    item.object_id,
                    item.kind or DEFAULT_KIND,
                    payload_json(item.payload),
                    None
                    if item.not_before is None
                    else not_before_value(item.not_before, name=f"[{position}].not_before"),
                )
                for position, item in enumerate(decoded)
            ]
    return _explained(body)


def _quotes(request: JobRequest | BatchItem) -> int:
    # An explicit null (e.g. "on_busy": null) is not counted: the rules read that body.
    quotes = 2
    if request.on_busy is not None:
        quotes += 4
    if isinstance(request, JobRequest) and request.max_backlog is not None:
        quotes += 2
    if request.kind is not None:
        quotes += 4
    if request.payload is not msgspec.UNSET:
        quotes += 2 + bytes(request.payload).count(b'"')
    if request.not_before is not None:
        quotes += 4 if isinstance(request.not_before, str) else 2
    return quotes


def not_before_value(value: Any, *, name: str = "not_before") -> datetime | None:
    """A job's earliest start: ISO 8601 with an offset, or UNIX seconds; before the year 9000."""
    if value is None:
        return None
    sentence = (
        f"{name} must be an ISO 8601 date-time with an offset (e.g. 2026-12-05T10:00:00Z) or "
        "UNIX seconds, before the year 9000."
    )
    if isinstance(value, str):
        if not _NOT_BEFORE.match(value):
            raise invalid(sentence, name=name)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise invalid(sentence, name=name) from None
        if moment.tzinfo is None:
            raise invalid(
                f"{name} needs an offset (Z or +02:00): without one its instant is unknown.",
                name=name,
            )
        return moment.astimezone(UTC)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise invalid(sentence, name=name)
    seconds = float(value)
    if not 0 <= seconds < contract.NOT_BEFORE_MAX_SECONDS:
        raise invalid(sentence, name=name)
    return datetime.fromtimestamp(seconds, UTC)


def payload_json(raw: msgspec.Raw | msgspec.UnsetType) -> str | None:
    """A payload as the compact JSON text to store, or None (absent or null). Refuses what
    PostgreSQL's jsonb cannot hold (413 past MAX_PAYLOAD_BYTES)."""
    if raw is msgspec.UNSET:
        return None
    text = bytes(raw)
    if text == b"null":
        return None
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise invalid(f"payload is not JSON a job can keep: {exc}.", name="payload") from None
    except RecursionError:
        raise invalid("payload is nested too deeply.", name="payload") from None
    encoded = msgspec.json.encode(value)
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise Problem(
            413,
            "Payload too large",
            f"The payload is {len(encoded)} bytes as compact JSON; a payload may be at most "
            f"{MAX_PAYLOAD_BYTES} bytes (64 KiB). Nothing was written.",
            limit=MAX_PAYLOAD_BYTES,
        )
    if has_escaped_nul(encoded):
        raise invalid(
            "payload strings cannot hold \\u0000 (PostgreSQL's jsonb has no NUL character).",
            name="payload",
        )
    return encoded.decode()


def _explained(body: bytes) -> JobBody | list[NewJob]:
    """The hand-written reading of a body: the exact sentence for whatever is wrong with it,
    and integral numbers such as 768.0 or 7.68e2 read (exactly) as the integers they are."""
    document = parse_json(body)
    if isinstance(document, list):
        return _batch(document, body)
    return _job_request(document, body)


def _batch(items: list[Any], body: bytes) -> list[NewJob]:
    if not 1 <= len(items) <= contract.MAX_BATCH:
        raise invalid(f"A batch holds 1 to {contract.MAX_BATCH} jobs (got {len(items)}).")
    checked = []
    for position, item in enumerate(items):
        if not isinstance(item, dict) or "object_id" not in item or set(item) - _BATCH_FIELDS:
            raise invalid(
                f'Batch item {position} must be {{"object_id": <integer>}}, with "kind", '
                '"payload" and "not_before" if wanted, and nothing else; policies other than '
                "queue are per request, not per batch.",
                name=f"[{position}]",
            )
        refuse_repeated_keys(item)
        if item.get("on_busy") not in (None, "queue"):
            raise invalid(
                f"Batch item {position}: every job of a batch queues (on_busy queue or null); "
                "send a job with another on_busy as a request of its own.",
                name=f"[{position}].on_busy",
            )
        checked.append(
            (
                object_id_value(item["object_id"]),
                kind_value(item.get("kind")),
                not_before_value(item.get("not_before"), name=f"[{position}].not_before"),
            )
        )
    payloads = _raw_payloads(body)
    assert isinstance(payloads, list)
    return [
        NewJob(object_id, kind, payload_json(raw.payload), not_before)
        for (object_id, kind, not_before), raw in zip(checked, payloads, strict=True)
    ]


def _job_request(document: Any, body: bytes) -> JobBody:
    if not isinstance(document, dict):
        raise invalid(f"The body must be a JSON object (or an array of them); {_EXAMPLE}.")
    refuse_repeated_keys(document)
    unknown = sorted(set(document) - JOB_FIELDS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise invalid(
            f"Unknown field(s) {names}: a job takes {_JOB_FIELD_NAMES}.",
            name=unknown[0],
        )
    if "object_id" not in document:
        raise invalid(f"object_id is missing; {_EXAMPLE}.", name="object_id")
    object_id = object_id_value(document["object_id"])
    kind = kind_value(document.get("kind"))
    on_busy = document.get("on_busy")
    if on_busy is not None and on_busy not in contract.ON_BUSY_VALUES:
        choices = ", ".join(contract.ON_BUSY_VALUES)
        raise invalid(f"on_busy must be one of {choices}.", name="on_busy")
    max_backlog = document.get("max_backlog")
    if max_backlog is not None:
        max_backlog = json_integer(max_backlog)
        if max_backlog is None or not 1 <= max_backlog <= contract.MAX_BACKLOG_LIMIT:
            raise invalid(
                f"max_backlog must be an integer from 1 to {contract.MAX_BACKLOG_LIMIT}.",
                name="max_backlog",
            )
    not_before = not_before_value(document.get("not_before"))
    payload = _raw_payloads(body)
    assert isinstance(payload, _PayloadOf)
    return JobBody(
        NewJob(object_id, kind, payload_json(payload.payload), not_before),
        cast(OnBusyName | None, on_busy),
        max_backlog,
    )


def kind_value(value: Any, *, status: int = 422) -> str:
    """A job's kind (absent or null: the default one); `status` 400 for a query parameter."""
    if value is None:
        return DEFAULT_KIND
    if not isinstance(value, str) or not _KIND.fullmatch(value):
        raise invalid(
            "kind must be a name of 1 to 64 characters from a-z, 0-9, _, . and -.",
            name="kind",
            status=status,
        )
    return value


def _raw_payloads(body: bytes) -> _PayloadOf | list[_PayloadOf]:
    """The payloads' exact text, read again from a body whose other fields passed the rules."""
    try:
        return _PAYLOADS.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        # The rules accepted the document, so what the strict decoder refuses is in a payload
        # (a lone surrogate, a number beyond a float, nesting too deep).
        raise invalid(f"payload is not JSON a job can keep: {exc}.", name="payload") from None


def parse_idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key header: 1-255 visible ASCII characters, or absent."""
    if value is None:
        return None
    visible = all("!" <= char <= "~" for char in value)
    if not 1 <= len(value) <= contract.MAX_IDEMPOTENCY_KEY or not visible:
        raise invalid(
            "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces).",
            name="Idempotency-Key",
            status=400,
        )
    return value


def json_integer(value: Any) -> int | None:
    """The integer a JSON number stands for, or None if it is not an integer.

    JSON Schema's `integer` is any number without a fractional part, so `768.0` and `7.68e2`
    are the integer 768 (clients whose encoder writes integral floats so are within the
    document). Numbers with a fraction or exponent arrive as Decimal (see `parse_json`), so
    the test is exact, also beyond a float's 53 bits.
    """
    # bool is an int in Python; in JSON it is not a number.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite():
        if value.is_zero():  # also 0e999999999
            return 0
        if value.adjusted() > _MAX_INTEGER_DIGITS:
            # Far outside int64 either way; int() of 1e999999999 would build a billion digits.
            return INT64_MAX + 1 if value > 0 else INT64_MIN - 1
        if value == value.to_integral_value():
            return int(value)
    return None


def object_id_value(value: Any) -> int:
    """Check a JSON value is an int64 object id."""
    number = json_integer(value)
    if number is None:
        raise invalid(f"object_id must be an integer, not {_json_kind(value)}.", name="object_id")
    if not INT64_MIN <= number <= INT64_MAX:
        raise invalid(
            f"object_id must be between {INT64_MIN} and {INT64_MAX} (a 64-bit integer).",
            name="object_id",
        )
    return number


def parse_job_id(raw: str) -> int:
    """A job id from the path; anything that cannot be an id is simply not found."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > INT64_MAX:
        raise not_found(f"There is no job {raw!r}; job ids are positive integers.")
    return int(raw)


def parse_object_id(raw: str) -> int:
    """An object id from the path; anything that is not a 64-bit integer is not found."""
    digits = raw.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise not_found(f"There is no object {raw!r}; object ids are 64-bit integers.")
    value = int(raw)
    if not INT64_MIN <= value <= INT64_MAX:
        raise not_found(f"There is no object {raw!r}; object ids are 64-bit integers.")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """Which jobs: the filters `GET /jobs` and `POST /jobs/retry` share (None: any)."""

    kind: str | None
    object_id: int | None
    status: Status | None
    # A JSON object the job's payload must contain.
    payload: dict[str, Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class ListQuery(Filters):
    """`GET /jobs` parameters."""

    limit: int
    after: PageEnd | None


@dataclasses.dataclass(frozen=True, slots=True)
class RetryQuery(Filters):
    """`POST /jobs/retry` parameters; `status` is FAILED or CANCELLED."""

    status: Status
    dry_run: bool


def refuse_unknown_params(query: Mapping[str, str], known: frozenset[str]) -> None:
    """A 400 naming the first query parameter not in `known`."""
    unknown = sorted(set(query) - known)
    if unknown:
        raise invalid(
            f"Unknown query parameter(s) {', '.join(unknown)}; use {', '.join(sorted(known))}.",
            name=unknown[0],
            status=400,
        )


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    """`GET /jobs` parameters: kind, object_id, status, payload, limit, cursor (the
    `next_cursor` of the previous page: where it ended)."""
    refuse_unknown_params(query, LIST_PARAMS)
    filters = _filters(query)
    limit = contract.DEFAULT_PAGE
    if "limit" in query:
        limit = int_param(query, "limit", 1, contract.MAX_PAGE)
    after = None
    if "cursor" in query:
        after = parse_page_cursor(query["cursor"])
        if after is None:
            raise invalid(
                f"cursor must be the next_cursor of a previous page (got {query['cursor']!r}).",
                name="cursor",
                status=400,
            )
    return ListQuery(**_fields(filters), limit=limit, after=after)


def parse_retry_query(query: Mapping[str, str]) -> RetryQuery:
    """`POST /jobs/retry` parameters: status (FAILED or CANCELLED, required), kind,
    object_id, payload, dry_run."""
    refuse_unknown_params(query, RETRY_PARAMS)
    filters = _filters(query)
    if filters.status not in (Status.FAILED, Status.CANCELLED):
        got = "none" if filters.status is None else filters.status.value
        raise invalid(
            f"status must be FAILED or CANCELLED (got {got}): only finished jobs that did not "
            "succeed can be retried. Nothing was changed.",
            name="status",
            status=400,
        )
    fields = {**_fields(filters), "status": filters.status}
    return RetryQuery(**fields, dry_run=dry_run_param(query))


def _fields(filters: Filters) -> dict[str, Any]:
    return {field.name: getattr(filters, field.name) for field in dataclasses.fields(Filters)}


def _filters(query: Mapping[str, str]) -> Filters:
    object_id = None
    if "object_id" in query:
        object_id = int_param(query, "object_id", INT64_MIN, INT64_MAX)
    status = None
    if "status" in query:
        try:
            status = Status(query["status"].upper())
        except ValueError:
            raise invalid(
                f"status must be one of {', '.join(Status)}.", name="status", status=400
            ) from None
    kind = kind_value(query["kind"], status=400) if "kind" in query else None
    payload = payload_filter(query["payload"]) if "payload" in query else None
    return Filters(kind, object_id, status, payload)


def payload_filter(raw: str) -> dict[str, Any]:
    """The `payload` query parameter: a JSON object of at least one member (jobs whose payload
    contains it match); anything else is a 400."""
    try:
        value = msgspec.json.decode(raw.encode("utf-8", "surrogatepass"))
    except msgspec.DecodeError as exc:
        raise invalid(
            f"payload is not JSON ({exc}); send {_PAYLOAD_EXAMPLE}.", name="payload", status=400
        ) from None
    except RecursionError:
        raise invalid("payload is nested too deeply.", name="payload", status=400) from None
    if not isinstance(value, dict) or not value:
        got = "an empty object" if isinstance(value, dict) else _json_kind(value)
        raise invalid(
            f"payload must be {_PAYLOAD_EXAMPLE} (an object with at least one member, not {got}).",
            name="payload",
            status=400,
        )
    if has_escaped_nul(msgspec.json.encode(value)):
        raise invalid(
            "payload strings cannot hold \\u0000 (no stored payload holds one).",
            name="payload",
            status=400,
        )
    return value


def dry_run_param(query: Mapping[str, str]) -> bool:
    """The `dry_run` query parameter: true (1) or false (0, the default)."""
    value = query.get("dry_run", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise invalid("dry_run must be true or false.", name="dry_run", status=400)
    return value in ("true", "1")


def int_param(query: Mapping[str, str], name: str, low: int, high: int) -> int:
    """The integer query parameter `name` (present), within [low, high]; else a 400."""
    raw = query[name].strip()
    digits = raw.removeprefix("-")
    number: int | None = None
    if digits.isascii() and digits.isdigit():
        number = int(raw)
    elif _JSON_NUMBER.fullmatch(raw):
        number = json_integer(Decimal(raw))  # 20.0 is the integer 20, as in a body
    if number is None or not low <= number <= high:
        raise invalid(
            f"{name} must be an integer from {low} to {high} (got {raw!r}).",
            name=name,
            status=400,
        )
    return number


def parse_json(body: bytes, *, example: str = _EXAMPLE) -> Any:
    """A request's JSON document, numbers with a fraction as Decimal (exact); a 400 for
    anything that is not one JSON text, `example` saying what to send."""
    if not body.strip():
        raise invalid(f"The body is empty; {example}.", status=400)
    try:
        text = body.decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
            # Exact: 9007199254740993.0 must not become ...992 on its way to an integer.
            parse_float=Decimal,
        )
    except UnicodeDecodeError:
        raise invalid("The body is not UTF-8 text.", status=400) from None
    except json.JSONDecodeError as exc:
        raise invalid(
            f"The body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).",
            status=400,
        ) from None
    except ValueError:
        # Python refuses integers of more than 4300 digits; no object id is that long.
        raise invalid("object_id must be a 64-bit integer.", name="object_id") from None
    except RecursionError:
        raise invalid("The body's JSON is nested too deeply.", status=400) from None


class _Repeated(dict[str, Any]):
    """A JSON object with a key written twice (the last value kept, as jsonb keeps it)."""

    repeated: str


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Refused for the request's own objects only (`refuse_repeated_keys`): inside a payload a
    # repeated key keeps its last value, as the fast path and jsonb both do.
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            repeated = _Repeated(document)
            repeated.repeated = key
            document = repeated
        document[key] = value
    return document


def refuse_repeated_keys(document: dict[str, Any]) -> None:
    if isinstance(document, _Repeated):
        key = document.repeated
        raise invalid(f"The field {key!r} appears twice.", name=key, status=400)


def _no_constants(name: str) -> Any:
    raise invalid(f"{name} is not a JSON number.", status=400)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Decimal):
        return "a number with a fractional part"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
