"""The API as an OpenAPI 3.1 document, served at `GET /openapi.json`; the tests hold the app to it.

The document is a plain dict built once at import; what is served adds the kinds the
deployment runs at the moment (few variants, each encoded once). The schemas of the job
requests and responses are generated from the shapes the API decodes with (paceline.shapes),
and every bound comes from paceline.contract, which the validation uses too, so the document
and the service cannot drift apart.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import orjson
from aiohttp import web

from paceline import __version__, shapes
from paceline.contract import DEFAULT_PAGE, KIND_PATTERN, MAX_PAGE
from paceline.web.keys import KINDS
from paceline.web.problems import MAX_BODY_BYTES, PROBLEM_JSON

routes = web.RouteTableDef()

JSON = "application/json"
REF_TEMPLATE = "#/components/schemas/{name}"

INT64: dict[str, Any] = shapes.schema(shapes.Int64, REF_TEMPLATE)
JOB_ID: dict[str, Any] = shapes.schema(shapes.JobId, REF_TEMPLATE)
CURSOR: dict[str, Any] = shapes.schema(shapes.Cursor, REF_TEMPLATE)
UTC_TIME: dict[str, Any] = shapes.schema(shapes.UtcTime, REF_TEMPLATE)
# JobBatch (a JSON array), and JobRequest, Job, JoinedJob, CreatedJobs, JobPage, Status.
NAMED_SCHEMAS, SHAPE_SCHEMAS = shapes.json_schemas(REF_TEMPLATE)


KIND_PARAMETER: dict[str, Any] = {
    "name": "kind",
    "in": "query",
    "schema": {"type": "string", "pattern": KIND_PATTERN},
}


# `payload` of GET /jobs and POST /jobs/retry: a JSON object, sent as JSON text in the query.
PAYLOAD_PARAMETER: dict[str, Any] = {
    "name": "payload",
    "in": "query",
    "description": (
        'Jobs whose payload contains this JSON object (`{"customer": 42}` matches '
        '`{"customer": 42, "order": 7}`; arrays match a subset of their elements), as JSON in '
        "the query string, URL-encoded. Anything else (not JSON, not an object, an empty "
        "object) is a 400."
    ),
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"type": "string", "pattern": "^[^\\u0000]*$"},
                "additionalProperties": {"$ref": REF_TEMPLATE.format(name="PayloadValue")},
            }
        }
    },
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _problem(
    description: str,
    headers: dict[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": schema or _ref("schemas", "Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _json(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


SCHEMAS: dict[str, Any] = {
    **SHAPE_SCHEMAS,
    **NAMED_SCHEMAS,
}

RESPONSES: dict[str, Any] = {
    "BadRequest": _problem("Malformed: not JSON, not UTF-8, duplicate keys, bad parameters."),
    "Unauthorized": _problem(
        "Tokens are configured (PACELINE_TOKENS, PACELINE_API_TOKEN) and no valid bearer token "
        "(or page session) was sent.",
        headers={"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    ),
    "Forbidden": _problem(
        "The token is valid but its scope does not take this operation (`submit` creates jobs "
        "and reads them by id, `read` reads everything, `admin` does everything); nothing "
        "was done."
    ),
    "NotFound": _problem("No such job (anything that is not a job id is not found either)."),
    "RequestTimeout": _problem(
        "The body trickled in too slowly; nothing was written.",
        headers={"Connection": {"schema": {"type": "string", "const": "close"}}},
    ),
    "Conflict": _problem(
        "The job already started or finished; only a PENDING job can be cancelled.",
        schema={
            "allOf": [_ref("schemas", "Problem")],
            "properties": {"job": {**_ref("schemas", "Job"), "description": "As it is now."}},
        },
    ),
    "NotRetryable": _problem(
        "The job is PENDING, PROCESSING or SUCCESS; only a FAILED or CANCELLED job can be "
        "retried. Nothing was changed.",
        schema={
            "allOf": [_ref("schemas", "Problem")],
            "properties": {"job": {**_ref("schemas", "Job"), "description": "As it is now."}},
        },
    ),
    "NoSuchLimit": _problem(
        "No such kind or object (a name no kind can have), or nothing of its own to drop."
    ),
    "ContentTooLarge": _problem(f"The body is over {MAX_BODY_BYTES // 1024} KiB."),
    "UnsupportedMediaType": _problem("The body is not application/json."),
    "UnprocessableContent": _problem("Well-formed JSON, but not a job request."),
    "ServiceUnavailable": _problem(
        "The database is unreachable; nothing was changed. Retry shortly.",
        headers={"Retry-After": {"schema": {"type": "string"}, "required": True}},
    ),
}

PAGE_SIZE_PARAMETER: dict[str, Any] = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
}

JOB_ID_PARAMETER: dict[str, Any] = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": JOB_ID,
}

# Every route but the probes may answer these.
COMMON = {
    "401": _ref("responses", "Unauthorized"),
    "403": _ref("responses", "Forbidden"),
    "503": _ref("responses", "ServiceUnavailable"),
}
JOB = _ref("schemas", "Job")
JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
    "RetryJob": {"operationId": "retryJob", "parameters": {"job_id": "$response.body#/id"}},
}
# POST /jobs answers one job or, for a batch, {"jobs": [...]}, under the same status codes. A
# link belongs to a response, not to one of its shapes, so POST /jobs has none (an expression
# like `$response.body#/id` would not resolve for a batch): a client follows a single job's
# `Location` header, and the links start from the job itself (GET /jobs/{job_id}, cancel).

# The limits API (paceline.web.limits).
LIMIT = _ref("schemas", "Limit")
KIND_PATH: dict[str, Any] = {
    "name": "kind",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": KIND_PATTERN},
}
OBJECT_PATH: dict[str, Any] = {"name": "object_id", "in": "path", "required": True, "schema": INT64}
DRY_RUN: dict[str, Any] = {
    "name": "dry_run",
    "in": "query",
    "description": "true: answer what the change would move, and write nothing.",
    "schema": {"type": "boolean", "default": False},
}
LIMIT_BODY: dict[str, Any] = {
    "required": True,
    "content": {JSON: {"schema": _ref("schemas", "LimitRequest")}},
}
CHANGE_RESPONSES: dict[str, Any] = {
    "200": _json(
        "The limit after the change and the pending jobs whose slots it moved (or, with "
        "dry_run, would move).",
        _ref("schemas", "LimitChange"),
    ),
    "400": _ref("responses", "BadRequest"),
    "404": _ref("responses", "NoSuchLimit"),
    **COMMON,
}
BODY_ERRORS: dict[str, Any] = {
    "408": _ref("responses", "RequestTimeout"),
    "413": _ref("responses", "ContentTooLarge"),
    "415": _ref("responses", "UnsupportedMediaType"),
    "422": _problem("Well-formed JSON, but not a limit: a field out of its bounds or unknown."),
}

PATHS: dict[str, Any] = {
    "/jobs": {
        "post": {
            "operationId": "createJob",
            "summary": "Create a job in its object's next free slot of the rate window",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        "Retries with the same key and body return the same job, or the same "
                        "jobs of a batch (200), for 24 h; the same key with another body is a "
                        "422. Concurrent retries create the job (or batch) once."
                    ),
                    "schema": shapes.schema(shapes.IdempotencyKey, REF_TEMPLATE),
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "oneOf": [_ref("schemas", "JobRequest"), _ref("schemas", "JobBatch")]
                        }
                    }
                },
            },
            "responses": {
                "201": _json(
                    "Created; `run_at` says when its object's window lets it start. A batch "
                    'answers {"jobs": [...]} in request order, without Location.',
                    {"oneOf": [JOB, _ref("schemas", "CreatedJobs")]},
                    headers={
                        "Location": {
                            "description": "The job's address (one job, not a batch).",
                            "required": False,
                            "schema": {"type": "string", "format": "uri-reference"},
                        }
                    },
                ),
                "200": _json(
                    "Existing jobs: coalesced onto the object's pending job, or the replay "
                    "of an Idempotency-Key (header Idempotent-Replayed: true) of one job or of a "
                    'batch ({"jobs": [...]}, without Location).',
                    {"oneOf": [_ref("schemas", "JoinedJob"), _ref("schemas", "CreatedJobs")]},
                    headers={
                        "Location": {
                            "description": "The job's address (one job, not a batch).",
                            "required": False,
                            "schema": {"type": "string", "format": "uri-reference"},
                        },
                        "Idempotent-Replayed": {
                            "description": "`true` when an Idempotency-Key was replayed.",
                            "required": False,
                            "schema": {"type": "string", "const": "true"},
                        },
                    },
                ),
                "429": _problem(
                    "on_busy=reject and the object's window is busy, or max_backlog is reached; "
                    "nothing was written. The problem names `next_free_slot` and `retry_after`.",
                    headers={
                        "Retry-After": {
                            "description": "Whole seconds until the object's next free slot.",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    },
                ),
                "400": _ref("responses", "BadRequest"),
                "408": _ref("responses", "RequestTimeout"),
                "413": _ref("responses", "ContentTooLarge"),
                "415": _ref("responses", "UnsupportedMediaType"),
                "422": _ref("responses", "UnprocessableContent"),
                **COMMON,
            },
        },
        "get": {
            "operationId": "listJobs",
            "summary": "Jobs newest first, optionally of one kind, object, status and payload",
            "parameters": [
                KIND_PARAMETER,
                {"name": "object_id", "in": "query", "schema": INT64},
                {
                    "name": "status",
                    "in": "query",
                    "description": "Case-insensitive.",
                    "schema": _ref("schemas", "Status"),
                },
                PAYLOAD_PARAMETER,
                PAGE_SIZE_PARAMETER,
                {
                    "name": "cursor",
                    "in": "query",
                    "description": "The `next_cursor` of the previous page.",
                    "schema": CURSOR,
                },
            ],
            "responses": {
                "200": _json(
                    "One page.",
                    _ref("schemas", "JobPage"),
                    headers={
                        "Link": {
                            "description": '`<url>; rel="next"`; absent on the last page.',
                            "schema": {"type": "string"},
                        }
                    },
                ),
                "400": _ref("responses", "BadRequest"),
                **COMMON,
            },
        },
    },
    "/jobs/{job_id}": {
        "get": {
            "operationId": "getJob",
            "summary": "One job",
            "parameters": [JOB_ID_PARAMETER],
            "responses": {
                "200": _json("The job.", JOB, links=JOB_LINKS),
                "404": _ref("responses", "NotFound"),
                **COMMON,
            },
        }
    },
    "/jobs/{job_id}/cancel": {
        "post": {
            "operationId": "cancelJob",
            "summary": "Cancel a pending job",
            "parameters": [JOB_ID_PARAMETER],
            "responses": {
                "200": _json(
                    "The job, now CANCELLED.",
                    JOB,
                    links={"GetJob": JOB_LINKS["GetJob"]},
                ),
                "404": _ref("responses", "NotFound"),
                "409": _ref("responses", "Conflict"),
                **COMMON,
            },
        }
    },
    "/jobs/{job_id}/retry": {
        "post": {
            "operationId": "retryJob",
            "summary": "Run a FAILED or CANCELLED job again, at its object's next free slot",
            "description": (
                "The job goes back to PENDING at the first slot its (kind, object)'s limit in "
                "force allows after the jobs already waiting (null `run_at`: the kind or object "
                "is paused). It keeps its id, payload and attempt history; `attempts` goes on "
                "counting and `attempts_at_retry` becomes `attempts`, so PACELINE_MAX_ATTEMPTS "
                "allows as many attempts again. `started_at`, `finished_at`, `duration`, "
                "`error` and `result` are cleared. No body."
            ),
            "parameters": [JOB_ID_PARAMETER],
            "responses": {
                "200": _json(
                    "The job, now PENDING, with its new `run_at`.",
                    JOB,
                    links={"GetJob": JOB_LINKS["GetJob"], "CancelJob": JOB_LINKS["CancelJob"]},
                ),
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                "409": _ref("responses", "NotRetryable"),
                **COMMON,
            },
        }
    },
    "/jobs/retry": {
        "post": {
            "operationId": "retryJobs",
            "summary": "Run every FAILED (or CANCELLED) job that matches the filters again",
            "description": (
                "The filters of GET /jobs, `status` required. The matching jobs are retried as "
                "POST /jobs/{job_id}/retry does, oldest slot first, each at its (kind, "
                "object)'s next free slot: one object's jobs take one slot each, spaced by its "
                "limit, never a burst. No body."
            ),
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "required": True,
                    "description": "Case-insensitive.",
                    "schema": {"type": "string", "enum": ["FAILED", "CANCELLED"]},
                },
                KIND_PARAMETER,
                {"name": "object_id", "in": "query", "schema": INT64},
                PAYLOAD_PARAMETER,
                {
                    **DRY_RUN,
                    "description": "true: answer how many jobs would be retried, and their first "
                    "and last slot, and change nothing.",
                },
            ],
            "responses": {
                "200": _json("What was retried.", _ref("schemas", "RetriedJobs")),
                "400": _ref("responses", "BadRequest"),
                **COMMON,
            },
        }
    },
    "/limits": {
        "get": {
            "operationId": "listLimits",
            "summary": "Every kind's limit: those set, and the kinds the replicas run",
            "responses": {"200": _json("By kind.", _ref("schemas", "LimitList")), **COMMON},
        }
    },
    "/limits/{kind}": {
        "parameters": [KIND_PATH],
        "get": {
            "operationId": "getKindLimit",
            "summary": "A kind's limit, as its objects without an override have it",
            "responses": {
                "200": _json("The limit.", LIMIT),
                "404": _ref("responses", "NoSuchLimit"),
                **COMMON,
            },
        },
        "put": {
            "operationId": "putKindLimit",
            "summary": "Set a kind's limit; its waiting jobs' slots follow at once",
            "parameters": [DRY_RUN],
            "requestBody": LIMIT_BODY,
            "responses": {**CHANGE_RESPONSES, **BODY_ERRORS},
        },
        "delete": {
            "operationId": "deleteKindLimit",
            "summary": "Drop a kind's own limit: it inherits the default kind's",
            "parameters": [DRY_RUN],
            "responses": {
                **CHANGE_RESPONSES,
                "409": _problem("The default kind's limit cannot be dropped."),
            },
        },
    },
    "/limits/{kind}/pause": {
        "parameters": [KIND_PATH],
        "post": {
            "operationId": "pauseKind",
            "summary": "Pause a kind: none of its jobs starts; running ones finish",
            "parameters": [DRY_RUN],
            "responses": CHANGE_RESPONSES,
        },
    },
    "/limits/{kind}/resume": {
        "parameters": [KIND_PATH],
        "post": {
            "operationId": "resumeKind",
            "summary": "Resume a kind: its waiting jobs are planned from now, by the limit",
            "parameters": [DRY_RUN],
            "responses": CHANGE_RESPONSES,
        },
    },
    "/limits/{kind}/objects": {
        "parameters": [KIND_PATH],
        "get": {
            "operationId": "listLimitOverrides",
            "summary": "A kind's per-object overrides in object order",
            "parameters": [
                {
                    "name": "after",
                    "in": "query",
                    "description": "The `next_cursor` of the previous page.",
                    "schema": INT64,
                },
                PAGE_SIZE_PARAMETER,
            ],
            "responses": {
                "200": _json("One page.", _ref("schemas", "OverridePage")),
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NoSuchLimit"),
                **COMMON,
            },
        },
    },
    "/limits/{kind}/objects/{object_id}": {
        "parameters": [KIND_PATH, OBJECT_PATH],
        "get": {
            "operationId": "getObjectLimit",
            "summary": "One (kind, object)'s limit: its override over its kind's",
            "responses": {
                "200": _json("The limit.", LIMIT),
                "404": _ref("responses", "NoSuchLimit"),
                **COMMON,
            },
        },
        "put": {
            "operationId": "putObjectLimit",
            "summary": "Override one object's limit; its waiting jobs' slots follow at once",
            "parameters": [DRY_RUN],
            "requestBody": LIMIT_BODY,
            "responses": {**CHANGE_RESPONSES, **BODY_ERRORS},
        },
        "delete": {
            "operationId": "deleteObjectLimit",
            "summary": "Drop one object's override: it has its kind's limit again",
            "parameters": [DRY_RUN],
            "responses": CHANGE_RESPONSES,
        },
    },
    "/limits/{kind}/objects/{object_id}/pause": {
        "parameters": [KIND_PATH, OBJECT_PATH],
        "post": {
            "operationId": "pauseObject",
            "summary": "Pause one (kind, object); its kind's other objects go on",
            "parameters": [DRY_RUN],
            "responses": CHANGE_RESPONSES,
        },
    },
    "/limits/{kind}/objects/{object_id}/resume": {
        "parameters": [KIND_PATH, OBJECT_PATH],
        "post": {
            "operationId": "resumeObject",
            "summary": "Resume one (kind, object): planned from now, spaced by the limit",
            "parameters": [DRY_RUN],
            "responses": CHANGE_RESPONSES,
        },
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "The process is up",
            "security": [],
            "responses": {"200": _json("Alive.", _ref("schemas", "Health"))},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "The database answers",
            "security": [],
            "responses": {
                "200": _json("Ready.", _ref("schemas", "Health")),
                "503": _ref("responses", "ServiceUnavailable"),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "The text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **COMMON,
            },
        }
    },
    "/overview": {
        "get": {
            "operationId": "overview",
            "summary": "The queue now: counts, due vs. waiting, the last minutes, failures",
            "responses": {"200": _json("The whole queue.", _ref("schemas", "Overview")), **COMMON},
        }
    },
    "/objects/{object_id}/timeline": {
        "get": {
            "operationId": "objectTimeline",
            "summary": "A (kind, object)'s runs and reserved slots, and why each waiting job waits",
            "parameters": [
                {"name": "object_id", "in": "path", "required": True, "schema": INT64},
                {**KIND_PARAMETER, "description": "The kind (default `default`)."},
            ],
            "responses": {
                "200": _json("The timeline.", _ref("schemas", "Timeline")),
                "400": _ref("responses", "BadRequest"),
                "404": _ref("responses", "NotFound"),
                **COMMON,
            },
        }
    },
    "/workers": {
        "get": {
            "operationId": "workers",
            "summary": "The replicas with workers, alive or dead",
            "responses": {
                "200": _json(
                    "Oldest first.",
                    {
                        "type": "object",
                        "required": ["workers"],
                        "properties": {
                            "workers": {"type": "array", "items": _ref("schemas", "Replica")}
                        },
                    },
                ),
                **COMMON,
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
        }
    },
}

# A path's shared `parameters` (the limits' kind and object id) are written once per path above
# and moved into each of its operations: every path item then holds operations only, which is
# how the tests and simple clients walk the document.
for _item in PATHS.values():
    _shared = _item.pop("parameters", [])
    for _operation in _item.values():
        _operation["parameters"] = [*_shared, *_operation.get("parameters", [])]

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "paceline",
        "version": __version__,
        "summary": "A job service with a per-object rate window.",
        "description": (
            "At most one run of an object per window; extra requests wait for their object's "
            "next free slot. Errors are application/problem+json (RFC 9457) with a sentence in "
            "`detail`; a refused request changes nothing."
        ),
    },
    # Optional: only when tokens are configured (PACELINE_TOKENS, PACELINE_API_TOKEN). The
    # probes and this document never need one: the document holds no job data, and clients
    # read it before they have a token.
    "security": [{}, {"bearerAuth": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "responses": RESPONSES,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "A token of PACELINE_TOKENS: `submit` may POST /jobs and GET /jobs/{job_id}, "
                    "`read` every GET, `admin` everything. 401 without a valid token, 403 with "
                    "one of another scope."
                ),
            }
        },
    },
}

_KNOWN_KINDS = (
    " One of the kinds this deployment runs now (a handler in this replica's settings or a "
    "live replica's); any other is refused with 422."
)


@functools.lru_cache(maxsize=16)
def encoded(kinds: tuple[str, ...]) -> bytes:
    """The document with the kinds a request may name now, encoded (a few variants cached)."""
    document = copy.deepcopy(DOCUMENT)
    for shape in ("JobRequest", "BatchItem"):
        kind = document["components"]["schemas"][shape]["properties"]["kind"]
        named, _null = kind["anyOf"]
        named["enum"] = list(kinds)
        named["description"] += _KNOWN_KINDS
    return orjson.dumps(document)


@routes.get("/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this API, with the kinds it takes now."""
    kinds = await request.app[KINDS].known()
    return web.Response(body=encoded(tuple(kinds)), content_type=JSON)
