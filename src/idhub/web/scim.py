"""`/scim/v2/`: the SCIM 2.0 service provider's HTTP glue (RFC 7644). Every decision is
`core/scim/`'s; this module authenticates the source's bearer token, parses the request and
renders the answer as `application/scim+json` (errors as SCIM Error bodies)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.scim import discovery
from idhub.core.scim.errors import ScimError, invalid_syntax, not_found
from idhub.core.scim.query import parse_query, project
from idhub.core.scim.resources import ERROR_SCHEMA
from idhub.core.scim.service import Call, check_not_modified
from idhub.errors import Conflict, InvalidInput
from idhub.web.middleware import request_context
from idhub.web.oauth import bearer_token

PREFIX = "/scim/v2"
MEDIA = "application/scim+json"
KINDS = {"Users": "User", "Groups": "Group"}
_QUERY_KEYS = ("filter", "sortBy", "sortOrder", "startIndex", "count")
_PROJECTION = ("attributes", "excludedAttributes")

Handler = Callable[[Request, Call], Awaitable[Response]]


def scim_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, media_type=MEDIA, headers=headers)


def error_response(exc: ScimError) -> Response:
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(exc.status)}
    if exc.scim_type:
        body["scimType"] = exc.scim_type
    body["detail"] = exc.detail
    headers = {"WWW-Authenticate": 'Bearer realm="idhub-scim"'} if exc.status == 401 else None
    return scim_response(body, exc.status, headers)


def _resource_response(doc: dict[str, Any], status: int = 200) -> Response:
    headers = {"ETag": doc["meta"]["version"], "Location": doc["meta"]["location"]}
    return scim_response(doc, status, headers)


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise invalid_syntax("the request body is not valid JSON") from exc


def _params(request: Request, keys: tuple[str, ...]) -> dict[str, str | None]:
    return {k: request.query_params.get(k) for k in keys}


def _guarded(services: Services, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            source = services.scim.authenticate(bearer_token(request))
            base = str(request.base_url).rstrip("/") + PREFIX
            return await handler(request, Call(source, base, request_context(request)))
        except ScimError as exc:
            return error_response(exc)
        except InvalidInput as exc:
            return error_response(ScimError(str(exc), scim_type="invalidValue"))
        except Conflict as exc:
            return error_response(ScimError(str(exc), status=409, scim_type="uniqueness"))

    return endpoint


def _kind(request: Request) -> str:
    kind = KINDS.get(request.path_params["kind"])
    if kind is None:
        raise not_found("no such resource type")
    return kind


def _handlers(services: Services) -> dict[str, Handler]:
    scim = services.scim

    async def collection(request: Request, call: Call) -> Response:
        kind = _kind(request)
        if request.method == "POST":
            payload = await _body(request)
            doc = await run_in_threadpool(scim.create, kind, call, payload)
            return _resource_response(doc, 201)
        query = parse_query(_params(request, _QUERY_KEYS + _PROJECTION))
        return scim_response(await run_in_threadpool(scim.list_resources, kind, call, query))

    async def search(request: Request, call: Call) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise invalid_syntax("a search body must be a SearchRequest object")
        fields = {k: body.get(k) for k in _QUERY_KEYS + _PROJECTION}
        for key in _PROJECTION:
            if isinstance(fields[key], list):
                fields[key] = ",".join(str(v) for v in fields[key])  # type: ignore[union-attr]
        query = parse_query({k: None if v is None else str(v) for k, v in fields.items()})
        kind = _kind(request) if "kind" in request.path_params else "*"
        return scim_response(await run_in_threadpool(scim.list_resources, kind, call, query))

    async def resource(request: Request, call: Call) -> Response:
        kind, ident = _kind(request), request.path_params["ident"]
        if_match = request.headers.get("if-match")
        if request.method == "GET":
            doc = await run_in_threadpool(scim.get, kind, call, ident)
            if check_not_modified(request.headers.get("if-none-match"), doc["meta"]["version"]):
                return Response(status_code=304, headers={"ETag": doc["meta"]["version"]})
            projected = project(doc, parse_query(_params(request, _PROJECTION)))
            return scim_response(projected, headers={"ETag": doc["meta"]["version"]})
        if request.method == "DELETE":
            await run_in_threadpool(scim.delete, kind, call, ident, if_match=if_match)
            return Response(status_code=204)
        body = await _body(request)
        change = scim.replace if request.method == "PUT" else scim.patch
        doc = await run_in_threadpool(change, kind, call, ident, body, if_match=if_match)
        return _resource_response(doc)

    return {"collection": collection, "search": search, "resource": resource}


def _discovery_handlers() -> dict[str, Handler]:
    async def config(request: Request, call: Call) -> Response:
        return scim_response(discovery.service_provider_config(call.base))

    async def types(request: Request, call: Call) -> Response:
        docs = discovery.resource_types(call.base)
        ident = request.path_params.get("ident")
        if ident is None:
            return scim_response(discovery.listing(docs))
        return scim_response(discovery.one(docs, ident, "resource type"))

    async def schemas(request: Request, call: Call) -> Response:
        docs = discovery.schemas(call.base)
        ident = request.path_params.get("ident")
        if ident is None:
            return scim_response(discovery.listing(docs))
        return scim_response(discovery.one(docs, ident, "schema"))

    async def not_allowed(request: Request, call: Call) -> Response:
        raise ScimError(f"{request.method} is not allowed here", status=405)

    return {"config": config, "types": types, "schemas": schemas, "not_allowed": not_allowed}


def routes(services: Services) -> list[BaseRoute]:
    h = {**_handlers(services), **_discovery_handlers()}

    def route(path: str, name: str, methods: list[str]) -> Route:
        return Route(PREFIX + path, _guarded(services, h[name]), methods=methods)

    # Discovery is read-only: other methods get a SCIM 405 (not the 404 of `/{kind}`).
    writes = ["POST", "PUT", "PATCH", "DELETE"]
    return [
        route("/ServiceProviderConfig", "config", ["GET"]),
        route("/ResourceTypes", "types", ["GET"]),
        route("/ResourceTypes/{ident}", "types", ["GET"]),
        route("/Schemas", "schemas", ["GET"]),
        route("/Schemas/{ident:path}", "schemas", ["GET"]),
        *(
            route(p, "not_allowed", writes)
            for p in ("/ServiceProviderConfig", "/ResourceTypes", "/Schemas")
        ),
        route("/.search", "search", ["POST"]),
        route("/{kind}/.search", "search", ["POST"]),
        route("/{kind}", "collection", ["GET", "POST"]),
        route("/{kind}/{ident}", "resource", ["GET", "PUT", "PATCH", "DELETE"]),
    ]
