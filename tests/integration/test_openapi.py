"""The OpenAPI document: valid OpenAPI 3.1, served, and what the app really answers fits it."""

from __future__ import annotations

import io
import re
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from paceline.app import create_app
from paceline.config import Settings
from paceline.web import api, health, limits, metrics, openapi
from paceline.web.openapi import _KNOWN_KINDS, DOCUMENT
from paceline.web.problems import MAX_BODY_BYTES, PROBLEM_JSON
from tests.conftest import MakeClient
from tests.support import eventually

Client = TestClient[Any, Any]
JSON = {"Content-Type": "application/json"}


def app_routes(settings: Settings) -> set[tuple[str, str]]:
    """(method, path template) of every route the app has, HEAD aside."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in create_app(settings).router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def described_routes() -> set[tuple[str, str]]:
    """(method, path template) of the routes in the modules the document describes; a
    variable's pattern (`{job_id:regex}`) is not part of the template."""
    return {
        (route.method.lower(), re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path))
        for module in (api, health, limits, metrics, openapi)
        for route in module.routes
        if isinstance(route, web.RouteDef)
    }


def documented_routes() -> set[tuple[str, str]]:
    return {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` ("#/components/...") through the document."""
    while "$ref" in node:
        found: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        node = found
    return node


async def conforms(response: ClientResponse, path: str) -> Any:
    """Assert the response is one the document promises for this operation; return its body."""
    operation = DOCUMENT["paths"][path][response.method.lower()]
    status = str(response.status)
    assert status in operation["responses"], f"{response.method} {path}: {status} undocumented"
    documented = resolve(operation["responses"][status])
    [(media_type, content)] = documented["content"].items()
    assert response.content_type == media_type
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{name} header missing"
    if media_type.endswith("json"):
        body = await response.json(content_type=None)
    else:
        body = await response.text()
    # The whole document rides along so that the schema's `$ref`s resolve.
    validator = OAS31Validator(
        {**content["schema"], "components": DOCUMENT["components"]},
        format_checker=oas31_format_checker,
    )
    validator.validate(body)
    return body


def test_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT, cls=OpenAPIV31SpecValidator)
    assert DOCUMENT["openapi"].startswith("3.1.")


def test_every_api_route_is_documented() -> None:
    # A route added to the API without describing it fails here, not in a client.
    assert described_routes() <= documented_routes()


async def test_the_document_is_served(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    served = await response.json()
    # As built, but for the kinds a request may name now: this replica's (noop for default).
    for shape in ("JobRequest", "BatchItem"):
        named = served["components"]["schemas"][shape]["properties"]["kind"]["anyOf"][0]
        assert named.pop("enum") == ["default"]
        named["description"] = named["description"].removesuffix(_KNOWN_KINDS)
    assert served == DOCUMENT
    assert client.app is not None
    assert str(client.app.router["openapi"].url_for()) == "/openapi.json"


async def test_created_job_and_its_reads_conform(client: Client) -> None:
    created = await conforms(await client.post("/jobs", json={"object_id": 7}), "/jobs")
    read = await conforms(await client.get(f"/jobs/{created['id']}"), "/jobs/{job_id}")
    assert read == created
    assert created["status"] == "PENDING"


async def test_finished_job_conforms(make_client: MakeClient) -> None:
    client = await make_client()  # with workers: the job runs and finishes
    created = await (await client.post("/jobs", json={"object_id": 3})).json()

    async def finished() -> Any:
        job = await conforms(await client.get(f"/jobs/{created['id']}"), "/jobs/{job_id}")
        return job if job["status"] == "SUCCESS" else None

    job = await eventually(finished)
    assert job["duration"] is not None
    assert job["finished_at"] is not None
    assert job["attempts"] == 1


async def test_list_pages_conform(client: Client) -> None:
    for object_id in (1, 2, 3):
        await client.post("/jobs", json={"object_id": object_id})
    response = await client.get("/jobs", params={"limit": "2", "status": "pending"})
    page = await conforms(response, "/jobs")
    assert len(page["jobs"]) == 2
    assert page["next_cursor"] is not None
    assert 'rel="next"' in response.headers["Link"]
    last = await conforms(
        await client.get("/jobs", params={"cursor": page["next_cursor"]}), "/jobs"
    )
    assert [job["object_id"] for job in last["jobs"]] == [1]
    assert last["next_cursor"] is None


@pytest.mark.parametrize(
    ("sent", "template", "status"),
    [
        (("GET", "/jobs/999", {}), "/jobs/{job_id}", 404),
        (("GET", "/jobs/abc", {}), "/jobs/{job_id}", 404),
        (("POST", "/jobs", {"json": {"object_id": "7"}}), "/jobs", 422),
        (("POST", "/jobs", {"data": b"{", "headers": JSON}), "/jobs", 400),
        (("POST", "/jobs", {"data": b"object_id=7"}), "/jobs", 415),
        (
            ("POST", "/jobs", {"data": io.BytesIO(b" " * (MAX_BODY_BYTES + 1)), "headers": JSON}),
            "/jobs",
            413,
        ),
        (("GET", "/jobs", {"params": {"limit": "0"}}), "/jobs", 400),
        (("GET", "/jobs", {"params": {"sort": "id"}}), "/jobs", 400),
    ],
)
async def test_problems_conform(
    client: Client,
    db: asyncpg.Connection,
    sent: tuple[str, str, dict[str, Any]],
    template: str,
    status: int,
) -> None:
    method, path, kwargs = sent
    response = await client.request(method, path, **kwargs)
    assert response.status == status
    assert response.content_type == PROBLEM_JSON
    problem = await conforms(response, template)
    assert problem["status"] == status
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_with_a_token_only_the_documented_public_operations_are_open(
    make_client: MakeClient,
) -> None:
    client = await make_client(concurrency=0, api_token="s3cret-token-0123456789")
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            response = await client.request(method, path.replace("{job_id}", "1"))
            if operation.get("security") == []:
                assert response.status != 401, f"{method} {path}"
            elif response.status != 404 or path != "/metrics":  # /metrics may not exist yet
                assert response.status == 401, f"{method} {path}"
                await conforms(response, path)


async def test_the_document_is_public_while_the_api_needs_a_token(
    make_client: MakeClient,
) -> None:
    # It describes the API and holds no job data; clients read it before they have a token.
    client = await make_client(concurrency=0, api_token="s3cret-token-0123456789")
    document = await client.get("/openapi.json")
    assert document.status == 200
    assert (await document.json())["openapi"] == "3.1.0"
    assert (await client.get("/jobs")).status == 401
    assert (await client.post("/jobs", json={"object_id": 1})).status == 401


def _schema_alternatives(schema: dict[str, Any]) -> list[dict[str, Any]]:
    schema = resolve(schema)
    if "oneOf" in schema:
        return [
            alternative for item in schema["oneOf"] for alternative in _schema_alternatives(item)
        ]
    return [schema]


def test_every_link_resolves_for_every_shape_of_its_response() -> None:
    # A link belongs to a response; if that response has several shapes (one job or a batch),
    # the link's `$response.body#/...` must exist in each of them, or a client (or a fuzzer
    # following links) finds nothing to follow.
    links_seen = 0
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            for status, documented in operation["responses"].items():
                response = resolve(documented)
                for name, link in response.get("links", {}).items():
                    links_seen += 1
                    for expression in link["parameters"].values():
                        assert isinstance(expression, str)
                        pointer = expression.removeprefix("$response.body#/").split("/")
                        for shape in _schema_alternatives(
                            response["content"]["application/json"]["schema"]
                        ):
                            node = shape
                            for part in pointer:
                                assert part in node.get("required", []), (
                                    f"{method} {path} {status} link {name}: {expression} is "
                                    f"not always in {shape.get('title', shape)}"
                                )
                                node = resolve(node["properties"][part])
    assert links_seen >= 2


async def test_a_replayed_batch_conforms(client: Client) -> None:
    headers = {**JSON, "Idempotency-Key": "conform-batch"}
    batch = [{"object_id": 1}, {"object_id": 1}]
    created = await client.post("/jobs", json=batch, headers=headers)
    assert created.status == 201
    await conforms(created, "/jobs")
    replayed = await client.post("/jobs", json=batch, headers=headers)
    assert replayed.status == 200
    body = await conforms(replayed, "/jobs")
    assert body == await created.json()


async def test_probes_conform(client: Client) -> None:
    await conforms(await client.get("/healthz"), "/healthz")
    await conforms(await client.get("/readyz"), "/readyz")


async def test_cancel_conforms(client: Client, settings: Settings) -> None:
    if ("post", "/jobs/{job_id}/cancel") not in app_routes(settings):
        pytest.skip("POST /jobs/{job_id}/cancel is not implemented yet")
    template = "/jobs/{job_id}/cancel"
    job = await (await client.post("/jobs", json={"object_id": 5})).json()
    cancelled = await conforms(await client.post(f"/jobs/{job['id']}/cancel"), template)
    assert cancelled["status"] == "CANCELLED"
    # Cancelling twice: idempotent or a conflict, but always as documented.
    again = await client.post(f"/jobs/{job['id']}/cancel")
    assert again.status in (200, 409)
    await conforms(again, template)
    unknown = await client.post("/jobs/999/cancel")
    assert unknown.status == 404
    await conforms(unknown, template)


async def test_metrics_conform(client: Client, settings: Settings) -> None:
    if ("get", "/metrics") not in app_routes(settings):
        pytest.skip("GET /metrics is not implemented yet")
    await conforms(await client.get("/metrics"), "/metrics")
