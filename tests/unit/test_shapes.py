"""The shapes are declared once (paceline.shapes, paceline.contract); everything agrees.

The fast decoder and the hand-written reader of `POST /jobs` bodies give the same answer, so
reading with the shapes changed nothing a client sees; the API's job view and the client's
`Job` are the declared `Job`; the OpenAPI document states the contract's names and bounds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from paceline import client, contract, shapes
from paceline.queue import jobs
from paceline.web import openapi, validation
from paceline.web.problems import Problem
from tests.integration.test_validation_properties import DOCUMENTS, NEAR_VALID, documents_as_bytes

Outcome = validation.JobBody | list[jobs.NewJob] | tuple[int, str, object]


def _outcome(
    read: Callable[[bytes], validation.JobBody | list[jobs.NewJob]], body: bytes
) -> Outcome:
    try:
        return read(body)
    except Problem as problem:
        return (problem.status, problem.detail, problem.extensions)


# Payloads whose text holds quotes, escapes and keys written twice (kept, last value wins).
PAYLOADS = [
    '{"a": "\\"x\\""}',
    '{"a": 1, "a": 2}',
    '["\\u0041", {"k": [null, true]}]',
    '"\\u0000"',
    "1e999",
    '"\\ud800"',
    "12345678901234567890123",
]
OPTION_VALUES = st.sampled_from(
    [
        "null",
        '"queue"',
        '"coalesce"',
        '"reject"',
        '"replace"',
        '"append"',
        '"Queue"',
        "1",
        "3.0",
        "1000001",
        "true",
        '""',
        '"notify"',
        '"Not-A-Kind"',
        *PAYLOADS,
    ]
)
POLICY_BODIES = st.builds(
    lambda object_id, members, spaces: (
        "{"
        + f'{spaces}"object_id"{spaces}:{spaces}{object_id}'
        + "".join(f', "{name}": {value}' for name, value in members)
        + "}"
    ).encode(),
    st.sampled_from(["7", "7.0", "-0", "9223372036854775807", "9223372036854775808", '"7"']),
    st.lists(
        st.tuples(
            st.sampled_from(["on_busy", "max_backlog", "object_id", "x", "kind", "payload"]),
            OPTION_VALUES,
        ),
        max_size=3,
    ),
    st.sampled_from(["", " ", "\n"]),
)
BATCHES = st.lists(
    st.sampled_from(
        [
            '{"object_id": 1}',
            '{"object_id": 2.0}',
            '{"object_id":1,"object_id":2}',
            '{"object_id": 1, "kind": "notify", "payload": {"a": "\\"", "a": 2}}',
            '{"object_id": 1, "on_busy": "queue", "payload": "\\u0000"}',
            '{"object_id": 1, "on_busy": "append"}',
            '{"object_id": 1, "payload": null}',
        ]
    ),
    max_size=4,
).map(lambda items: ("[" + ",".join(items) + "]").encode())


def _json_text(document: object) -> bytes:
    """Any document as JSON text (members lists as arrays), non-ASCII as escapes: a lone
    surrogate, which DOCUMENTS draws, has no UTF-8 form (msgspec's encoder raised on one, and
    the test failed before it ran), but JSON's \\u escape writes it."""
    return json.dumps(document).encode()


@settings(max_examples=300, deadline=None)
@given(
    documents_as_bytes().map(lambda pair: pair[0])
    | NEAR_VALID
    | POLICY_BODIES
    | BATCHES
    | DOCUMENTS.map(_json_text)
)
@example(b'{"object_id": 1, "object_id": 2}')
@example(b'{"object_id": 1, "on_busy": "queue", "on_busy": "reject"}')
@example(b'{"object_id": 1, "max_backlog": 2, "max_backlog": 3}')
@example(b'{"object_id": 1, "on_busy": null}')
@example(b'{"obj\\u0065ct_id": 1, "object_id": 2}')
@example(b'[{"object_id": 1}, {"object_id": 2, "object_id": 3}]')
@example(b"[]")
@example(b'{"object_id": true}')
@example(b'{"object_id": 1, "on_busy": "qu\\u0065ue"}')
def test_the_shapes_and_the_hand_written_reader_agree(body: bytes) -> None:
    # parse_jobs_body decodes with the shapes and falls back to the reader; every answer,
    # accepted value or refusal (status, sentence, field), must be the reader's own.
    assert _outcome(validation.parse_jobs_body, body) == _outcome(validation._explained, body)


def _job(**changes: object) -> jobs.Job:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    fields: dict[str, object] = {
        "id": 1,
        "object_id": -(2**63),
        "status": jobs.Status.PENDING,
        "created_at": moment,
        "run_at": moment + timedelta(seconds=300),
        "started_at": None,
        "finished_at": None,
        "duration": None,
        "attempts": 0,
        "error": None,
    }
    return jobs.Job(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "job",
    [
        _job(),
        _job(
            status=jobs.Status.FAILED,
            started_at=datetime(2026, 1, 2, 3, 9, 5, tzinfo=UTC),
            finished_at=datetime(2026, 1, 2, 3, 9, 6, tzinfo=UTC),
            duration=1.5,
            attempts=3,
            error="boom",
        ),
    ],
)
def test_the_job_view_is_the_declared_job_shape(job: jobs.Job) -> None:
    document = job.to_json()
    assert list(document) == list(shapes.Job.__struct_fields__)
    assert msgspec.convert(document, shapes.Job) is not None  # types and bounds hold
    joined = {**document, "coalesced": True}
    assert msgspec.convert(joined, shapes.JoinedJob).coalesced is True


def test_the_clients_job_has_the_declared_fields() -> None:
    names = {field.name for field in dataclasses.fields(client.Job)}
    assert names == {*shapes.Job.__struct_fields__, "raw"}


def test_the_document_states_the_on_busy_names() -> None:
    on_busy = openapi.SCHEMAS["JobRequest"]["properties"]["on_busy"]["anyOf"][0]["enum"]
    assert sorted(on_busy) == sorted(contract.ON_BUSY_VALUES)


def test_the_document_states_the_contracts_bounds() -> None:
    schemas = openapi.SCHEMAS
    assert schemas["JobBatch"]["maxItems"] == contract.MAX_BATCH
    assert schemas["JobPage"]["properties"]["jobs"]["maxItems"] == contract.MAX_PAGE
    backlog = schemas["JobRequest"]["properties"]["max_backlog"]["anyOf"][0]
    assert backlog["maximum"] == contract.MAX_BACKLOG_LIMIT
    key = openapi.PATHS["/jobs"]["post"]["parameters"][0]["schema"]
    assert key["maxLength"] == contract.MAX_IDEMPOTENCY_KEY


def test_an_unknown_field_is_named_with_the_fields_a_job_takes() -> None:
    with pytest.raises(Problem) as refused:
        validation.parse_jobs_body(b'{"object_id": 1, "priority": 2}')
    assert refused.value.status == 422
    assert refused.value.detail == (
        "Unknown field(s) 'priority': "
        "a job takes object_id, on_busy, max_backlog, kind, payload and not_before."
    )
