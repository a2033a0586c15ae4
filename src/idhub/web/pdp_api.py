"""The decision API for systems (`/api/v1/authz/*`) and the OpenAPI description idhub serves.

Systems call it with their client-credentials access token (`aud` idhub, scope `authz`;
`authz:admin` for explain and the policy status). A batch is decided against one engine, so
every answer in it carries the same policy version. Denials, and allows as `[audit] decisions`
says, go to the audit trail in one `record_many` per request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import Actor
from idhub.core.authz.engine import Decision, Engine, explanation_json
from idhub.core.authz.model import user_subject
from idhub.errors import InvalidInput, PolicyError
from idhub.web.bearer import BearerError, check_bearer
from idhub.web.middleware import request_context
from idhub.web.oauth import bearer_token

MAX_BATCH = 1000
MAX_BODY = 2_000_000
_FIELDS = ("user", "sub", "domain", "type", "action", "owner", "dept", "resource_id")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": code, "error_description": message},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"request body larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON") from None


def _text(item: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
    value = item.get(key)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{where}.{key} is required")
        return ""
    if not isinstance(value, str) or len(value) > 1000:
        raise InvalidInput(f"{where}.{key} must be a string of at most 1000 characters")
    return value


def _parse(
    item: Any, where: str, engine: Engine, *, default_domain: str | None, needs: tuple[str, ...]
) -> dict[str, str]:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"{where} must be an object")
    unknown = sorted(set(item) - set(_FIELDS) - {"resource"})
    if unknown:
        raise InvalidInput(f"{where}: unknown field {unknown[0]!r}")
    resource = item.get("resource") or {}
    if not isinstance(resource, Mapping):
        raise InvalidInput(f"{where}.resource must be an object")
    merged = {**{k: v for k, v in resource.items() if k in ("owner", "dept", "id")}, **item}
    if "id" in merged and "resource_id" not in merged:
        merged["resource_id"] = merged["id"]
    rid = merged.get("resource_id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        merged["resource_id"] = str(rid)  # systems often number their records
    if not merged.get("user") and not merged.get("sub"):
        raise InvalidInput(f"{where}: give the user as `user` (username) or `sub`")
    parsed = {key: _text(merged, key, where, required=False) for key in _FIELDS}
    if not parsed["domain"]:
        if default_domain is None:
            raise InvalidInput(f"{where}.domain is required")
        parsed["domain"] = default_domain
    if parsed["domain"] not in engine.domains:
        raise InvalidInput(
            f"{where}.domain: unknown domain {parsed['domain']!r} "
            f"(configured: {', '.join(engine.domains)})"
        )
    for key in needs:
        _text(merged, key, where, required=True)
    return parsed


def _resolve(engine: Engine, parsed: dict[str, str]) -> tuple[str | None, str]:
    """(username or None, why not) from `user` or `sub`."""
    users = engine.directory.users
    if parsed["sub"]:
        name = engine.username_for_sub(parsed["sub"])
        if name is None:
            return None, "unknown user"
    else:
        name = parsed["user"]
        if name not in users:
            return None, "unknown user"
    if users[name].disabled:
        return None, "user is disabled"
    return name, ""


def decide(engine: Engine, parsed: dict[str, str]) -> tuple[Decision, str, str | None]:
    """(decision, reason, username): the one way a request about a user is decided, shared with
    the audit API. Unknown and disabled users are denied before the policy is asked."""
    username, problem = _resolve(engine, parsed)
    if username is None:
        return Decision(False), problem, None
    decision = engine.check(
        user_subject(username),
        parsed["domain"],
        parsed["type"],
        parsed["action"],
        parsed["owner"],
        parsed["dept"],
    )
    return decision, decision.reason, username


def _client_of(claims: Mapping[str, Any]) -> str:
    return str(claims.get("client_id") or claims.get("sub") or "unknown")


def routes(services: Services) -> list[BaseRoute]:
    def authorise(request: Request, scope: str) -> dict[str, Any]:
        return check_bearer(bearer_token(request), services, scope=scope)

    def do_check(request: Request, body: Any) -> Response:
        claims = authorise(request, "authz")
        engine = services.authz.engine
        client = _client_of(claims)
        default = client if client in engine.domains else None
        batch = isinstance(body, Mapping) and "requests" in body
        items = body["requests"] if batch else [body]
        if not isinstance(items, list) or not items:
            raise InvalidInput("`requests` must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise InvalidInput(f"at most {MAX_BATCH} requests per batch, got {len(items)}")
        results: list[dict[str, Any]] = []
        audited: list[tuple[Mapping[str, Any], Decision]] = []
        for index, item in enumerate(items):
            where = f"requests[{index}]" if batch else "request"
            parsed = _parse(item, where, engine, default_domain=default, needs=("type", "action"))
            decision, reason, username = decide(engine, parsed)
            results.append({"allowed": decision.allowed, "reason": reason})
            audited.append(
                (
                    {
                        **parsed,
                        "user": username or parsed["user"] or None,
                        "sub": parsed["sub"] or None,
                    },
                    decision,
                )
            )
        services.authz.record_decisions(
            audited,
            actor=Actor("client", client),
            version=engine.version,
            ctx=request_context(request),
        )
        if batch:
            return JSONResponse({"policy_version": engine.version, "results": results})
        return JSONResponse({**results[0], "policy_version": engine.version})

    def do_scopes(request: Request, body: Any) -> Response:
        claims = authorise(request, "authz")
        engine = services.authz.engine
        client = _client_of(claims)
        parsed = _parse(
            body,
            "request",
            engine,
            default_domain=client if client in engine.domains else None,
            needs=("type", "action"),
        )
        username, problem = _resolve(engine, parsed)
        if username is None:
            return JSONResponse(
                {
                    "all": False,
                    "self": False,
                    "departments": [],
                    "exclude": {"self": False, "departments": []},
                    "reason": problem,
                    "policy_version": engine.version,
                }
            )
        scope = engine.scopes(
            user_subject(username), parsed["domain"], parsed["type"], parsed["action"]
        )
        return JSONResponse({**scope.to_json(), "user": username, "policy_version": engine.version})

    def do_explain(request: Request, body: Any) -> Response:
        authorise(request, "authz:admin")
        engine = services.authz.engine
        parsed = _parse(body, "request", engine, default_domain=None, needs=("type", "action"))
        username, problem = _resolve(engine, parsed)
        if username is None:
            return JSONResponse(
                {"allowed": False, "reason": problem, "policy_version": engine.version}
            )
        result = engine.explain(
            user_subject(username),
            parsed["domain"],
            parsed["type"],
            parsed["action"],
            parsed["owner"],
            parsed["dept"],
        )
        return JSONResponse(explanation_json(engine, username, parsed["domain"], result))

    def do_status(request: Request, _body: Any) -> Response:
        authorise(request, "authz:admin")
        return JSONResponse(services.authz.status())

    def endpoint(handler: Any, *, read_body: bool = True) -> Any:
        async def run(request: Request) -> Response:
            try:
                body = await _body(request) if read_body else None
                return await run_in_threadpool(handler, request, body)
            except BearerError as exc:
                return exc.response()
            except InvalidInput as exc:
                return _error(400, "invalid_request", exc.message)
            except PolicyError as exc:
                # No policy could be loaded at all (a rejected reload keeps the old one).
                return _error(503, "policy_unavailable", exc.message)

        return run

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(
            prometheus_text(services.authz.status()), media_type="text/plain; version=0.0.4"
        )

    async def openapi(request: Request) -> Response:
        from idhub.web.pdp_openapi import openapi_document

        return JSONResponse(openapi_document(services.settings.server.issuer))

    return [
        Route("/api/v1/authz/check", endpoint(do_check), methods=["POST"]),
        Route("/api/v1/authz/scopes", endpoint(do_scopes), methods=["POST"]),
        Route("/api/v1/authz/explain", endpoint(do_explain), methods=["POST"]),
        Route("/api/v1/authz/policy", endpoint(do_status, read_body=False), methods=["GET"]),
        Route("/api/v1/authz/metrics", metrics, methods=["GET"]),
        Route("/api/v1/openapi.json", openapi, methods=["GET"]),
    ]


def prometheus_text(status: Mapping[str, Any]) -> str:
    """Reload health in the Prometheus text format, for alerting on rejected policy edits.
    Counters and the version only: nothing here is secret."""
    version = str(status.get("version") or "none").replace('"', "")
    lines = [
        "# HELP idhub_policy_reloads_total Policy reloads by result.",
        "# TYPE idhub_policy_reloads_total counter",
        f'idhub_policy_reloads_total{{result="ok"}} {status["reloads_ok"]}',
        f'idhub_policy_reloads_total{{result="rejected"}} {status["reloads_rejected"]}',
        "# HELP idhub_policy_last_reload_ok 1 if the last reload was accepted.",
        "# TYPE idhub_policy_last_reload_ok gauge",
        f"idhub_policy_last_reload_ok {int(bool(status['last_reload_ok']))}",
        "# HELP idhub_policy_last_reload_timestamp_seconds When the last reload finished.",
        "# TYPE idhub_policy_last_reload_timestamp_seconds gauge",
        f"idhub_policy_last_reload_timestamp_seconds {status['last_reload_at']}",
        "# HELP idhub_policy_last_reload_duration_seconds How long the last reload took.",
        "# TYPE idhub_policy_last_reload_duration_seconds gauge",
        f"idhub_policy_last_reload_duration_seconds {status['last_reload_seconds']}",
        "# HELP idhub_policy_directory_rebuilds_total Role recomputations after directory changes.",
        "# TYPE idhub_policy_directory_rebuilds_total counter",
        f"idhub_policy_directory_rebuilds_total {status['directory_rebuilds']}",
        "# HELP idhub_policy_loaded 1 while a policy is serving, labelled with its version.",
        "# TYPE idhub_policy_loaded gauge",
        f'idhub_policy_loaded{{version="{version}"}} {int(status.get("version") is not None)}',
        "# HELP idhub_policy_rules Policy lines in the serving policy.",
        "# TYPE idhub_policy_rules gauge",
        f"idhub_policy_rules {status['rules']}",
    ]
    return "\n".join(lines) + "\n"
