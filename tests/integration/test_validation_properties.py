"""Property tests of `POST /jobs` bodies: any bytes at all get a 201 or a clear 4xx, never a 5xx.

A body is accepted exactly when it is a JSON object whose only member is an int64 `object_id`
(an integer as JSON Schema has it: `7.0` and `7e0` are 7, `7.5` is not); everything else is a
problem+json with a sentence in `detail`, and writes nothing.
"""

from __future__ import annotations

import io
import json
import math
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from paceline.queue.jobs import INT64_MAX, INT64_MIN
from paceline.web.problems import MAX_BODY_BYTES, PROBLEM_JSON, Problem
from paceline.web.validation import parse_jobs_body

Client = TestClient[Any, Any]
Pairs = list[tuple[str, Any]]

# Every code point, lone surrogates included: JSON can carry them as "\ud800" escapes.
ANY_CHAR = st.characters(exclude_categories=())
KEYS = st.sampled_from(["object_id", "OBJECT_ID", "object_id ", ""]) | st.text(ANY_CHAR, max_size=6)
INTEGERS = (
    st.integers()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.sampled_from([INT64_MIN - 1, INT64_MIN, 0, -0, INT64_MAX, INT64_MAX + 1, 2**64, 10**100])
)
SCALARS = (
    st.none()
    | st.booleans()
    | INTEGERS
    | st.floats()  # NaN and ±Infinity encode as bare NaN/Infinity, which JSON does not have
    | st.text(ANY_CHAR, max_size=10)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=8,
)
# A top-level object as the list of its members, so that duplicate keys can be sent.
MEMBERS = st.lists(st.tuples(KEYS, st.one_of(INTEGERS, VALUES)), max_size=4)
# Bodies close to a job request, so that acceptance is tried as often as refusal.
JOB_LIKE = st.builds(
    lambda first, more: [first, *more],
    st.tuples(st.just("object_id"), INTEGERS | SCALARS),
    st.lists(st.tuples(KEYS, SCALARS), max_size=1),
)
DOCUMENTS = st.one_of(JOB_LIKE, MEMBERS, VALUES)


def as_int64(value: Any) -> int | None:
    """The int64 a JSON value written by json.dumps stands for, or None (the oracle's view)."""
    if type(value) is float and math.isfinite(value):
        # What the text says, exactly: 1.2345678901234568e+17 is 123456789012345680.
        number = Decimal(json.dumps(value))
        if number != number.to_integral_value():
            return None
        value = int(number)
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        return None
    return value


def valid_request(document: Any) -> int | list[int] | None:
    """The object_id (a batch: the ids) a document must be accepted with, or None if refused."""
    if isinstance(document, list) and document and not any(isinstance(m, tuple) for m in document):
        return valid_batch(document)
    if not isinstance(document, list) or not all(isinstance(m, tuple) for m in document):
        return None  # not an object (a JSON array is a list of lists, never of tuples)
    if len(document) != 1 or document[0][0] != "object_id":
        return None
    return as_int64(document[0][1])


def valid_batch(items: list[Any]) -> list[int] | None:
    """A JSON array is a batch: 1 to 1000 objects, each exactly {"object_id": int64}."""
    if len(items) > 1000:
        return None
    ids = []
    for item in items:
        if not isinstance(item, dict) or list(item) != ["object_id"]:
            return None
        value = as_int64(item["object_id"])
        if value is None:
            return None
        ids.append(value)
    return ids


def encode_document(document: Any, ensure_ascii: bool) -> bytes:
    """JSON text of a document; members lists become objects, keys in the order given."""
    if isinstance(document, list) and all(isinstance(m, tuple) for m in document) and document:
        members = ", ".join(
            f"{json.dumps(key, ensure_ascii=ensure_ascii)}: "
            f"{json.dumps(value, ensure_ascii=ensure_ascii)}"
            for key, value in document
        )
        text = "{" + members + "}"
    elif document == []:
        text = "{}"  # MEMBERS' empty list: an empty object (VALUES' [] means the same to us)
    else:
        text = json.dumps(document, ensure_ascii=ensure_ascii)
    # Without ensure_ascii a lone surrogate goes out as CESU-8 bytes: not UTF-8, so refused.
    return text.encode("utf-8", "surrogatepass")


@st.composite
def documents_as_bytes(draw: st.DrawFn) -> tuple[bytes, int | list[int] | None]:
    """(body, the object_id(s) it must be accepted with or None), from a known document."""
    document = draw(DOCUMENTS)
    if isinstance(document, dict):
        document = list(document.items())
    body = encode_document(document, ensure_ascii=draw(st.booleans()))
    return draw(st.sampled_from([body, b" \n" + body + b"\t\r\n"])), valid_request(document)


def mutated(body: bytes, position: int, insert: bytes, delete: int) -> bytes:
    position %= len(body) + 1
    return body[:position] + insert + body[position + delete :]


NEAR_VALID = st.builds(
    mutated,
    st.sampled_from([b'{"object_id": 7}', b'{"object_id":-9223372036854775808}']),
    st.integers(min_value=0),
    st.binary(max_size=3),
    st.integers(min_value=0, max_value=3),
)
DEEP = st.integers(min_value=1, max_value=20_000).flatmap(
    lambda depth: st.sampled_from(
        [
            b"[" * depth + b"]" * depth,
            b'{"object_id": ' * depth + b"1" + b"}" * depth,
            b"[" * depth,
            b'{"object_id": [' * depth + b"7" + b"]}" * depth,
        ]
    )
)
HUGE_INTS = st.integers(min_value=19, max_value=6_000).map(
    lambda digits: b'{"object_id": ' + b"9" * digits + b"}"
)
RAW_BODIES = st.one_of(st.binary(max_size=100), NEAR_VALID, DEEP, HUGE_INTS)


def outcome(body: bytes) -> int | list[int] | Problem:
    """What parse_jobs_body makes of a body (a batch: its ids), a refusal as its Problem."""
    try:
        parsed = parse_jobs_body(body)
    except Problem as problem:
        return problem
    if isinstance(parsed, list):
        return [new.object_id for new in parsed]
    return parsed.new.object_id


def assert_clear_refusal(problem: Problem) -> None:
    """A 4xx whose problem+json document can be encoded and says what is wrong."""
    assert 400 <= problem.status < 500, problem.status
    assert problem.detail.strip()
    response = problem.response()  # encoding must not fail: that would be a 500
    assert response.content_type == PROBLEM_JSON
    assert isinstance(response.body, bytes)
    sent = orjson.loads(response.body)
    assert sent["status"] == problem.status
    assert sent["detail"].strip()


def _single_id(body: bytes) -> int:
    value = accepted_as(body)
    assert isinstance(value, int)
    return value


def accepted_as(body: bytes) -> int | list[int] | None:
    """A second opinion on an accepted body, with the stdlib parser."""
    members = json.loads(body, object_pairs_hook=lambda pairs: pairs, parse_float=Decimal)
    assert isinstance(members, list)
    if members and all(isinstance(item, list) for item in members):  # a batch
        return [_single_id(json.dumps(dict(item)).encode()) for item in members]
    [(key, value)] = members
    assert key == "object_id"
    if isinstance(value, Decimal):
        assert value == value.to_integral_value()
        value = int(value)
    assert type(value) is int
    return value


@settings(max_examples=200, deadline=None)
@given(documents_as_bytes())
@example((b'{"\\ud800": 1}', None))
@example((b'{"object_id": 1, "\\udfff": 2}', None))
@example((b'{"\\ud800": 1, "\\ud800": 2}', None))
@example((b'{"object_id": 9223372036854775807}', INT64_MAX))
@example((b'{"object_id": -9223372036854775808}', INT64_MIN))
@example((b'{"object_id": 9223372036854775808}', None))
@example((b'{"object_id": 7.0}', 7))
@example((b'{"object_id": 7e0}', 7))
@example((b'{"object_id": 7.68e2}', 768))
@example((b'{"object_id": -54.0}', -54))
@example((b'{"object_id": 7.5}', None))
@example((b'{"object_id": 9007199254740993.0}', 9007199254740993))
@example((b'{"object_id": 9223372036854775807.0}', INT64_MAX))
@example((b'{"object_id": 9223372036854775808.0}', None))
@example((b'{"object_id": 1e999999999}', None))
@example((b'{"object_id": 1e-999999999}', None))
@example((b'{"object_id": 0e999999999}', 0))
@example((b'[{"object_id": -54.0}, {"object_id": 768.0}]', [-54, 768]))
@example((b'{"object_id": -0}', 0))
def test_documents_are_accepted_exactly_when_they_are_job_requests(
    case: tuple[bytes, int | list[int] | None],
) -> None:
    body, expected = case
    result = outcome(body)
    if expected is None:
        assert isinstance(result, Problem), f"accepted {body!r} as {result}"
        assert_clear_refusal(result)
    else:
        assert result == expected


@settings(max_examples=200, deadline=None)
@given(RAW_BODIES)
@example(b"\xef\xbb\xbf{}")  # a UTF-8 byte order mark
@example(b'"\\ud800"')
@example(b"\x00")
@example(b'{"object_id": 1}\x00')
def test_any_bytes_get_an_id_or_a_clear_refusal(body: bytes) -> None:
    result = outcome(body)
    if isinstance(result, Problem):
        assert_clear_refusal(result)
    else:
        assert accepted_as(body) == result


async def row_counts(db: asyncpg.Connection) -> tuple[int, int]:
    jobs = await db.fetchval("SELECT count(*) FROM jobs")
    slots = await db.fetchval("SELECT count(*) FROM object_slots")
    return jobs, slots


HTTP_BODIES = st.one_of(
    documents_as_bytes().map(lambda case: case[0]),
    RAW_BODIES,
    # A valid request padded to around the size limit, drawn as its size (a 2 MiB example
    # would be printed whole in every report); see `padded`.
    st.integers(min_value=MAX_BODY_BYTES - 2, max_value=MAX_BODY_BYTES + 2),
)


def padded(size: int) -> bytes:
    """`{"object_id": 7}` with spaces, `size` bytes long."""
    return b'{"object_id": 7' + b" " * (size - 16) + b"}"


# The client and database are the test's; each example looks at what it changes, not totals.
@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=HTTP_BODIES)
@example(body=b'{"\\ud800": 7}')
@example(body=b'{"object_id": 7, "object_id": 7}')
@example(body=b'{"object_id": 7}')
async def test_http_answers_201_or_a_problem_and_refusals_write_nothing(
    client: Client, db: asyncpg.Connection, body: bytes | int
) -> None:
    if isinstance(body, int):
        body = padded(body)
    before = await row_counts(db)
    response = await client.post(
        "/jobs", data=io.BytesIO(body), headers={"Content-Type": "application/json"}
    )
    after = await row_counts(db)
    expected = outcome(body) if len(body) <= MAX_BODY_BYTES else None
    if response.status == 201:
        created = await response.json()
        if isinstance(expected, list):
            assert [job["object_id"] for job in created["jobs"]] == expected
            assert after[0] == before[0] + len(expected)
        else:
            assert created["object_id"] == expected
            assert after[0] == before[0] + 1
    else:
        assert 400 <= response.status < 500, response.status
        assert response.content_type == PROBLEM_JSON
        problem = await response.json(content_type=None)
        assert problem["status"] == response.status
        assert problem["detail"].strip()
        if expected is None:
            assert response.status == 413
        else:
            assert isinstance(expected, Problem)
            assert response.status == expected.status
        assert after == before


async def test_a_lone_surrogate_in_a_field_name_is_echoed_escaped(client: Client) -> None:
    # Python decodes the JSON escape "\ud800" to a string that is not UTF-8; the problem
    # document must still encode (it used to be a 500) and show the name as it was sent.
    for body, status in [(b'{"\\ud800": 7}', 422), (b'{"\\udfff": 1, "\\udfff": 2}', 400)]:
        response = await client.post(
            "/jobs", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == status
        problem = await response.json(content_type=None)
        assert problem["invalid_params"][0]["name"] in ("\\ud800", "\\udfff")
