"""The decision API for systems (`/api/v1/authz/*`) and the OpenAPI description idhub serves.

Systems call it with their client-credentials access token (`aud` idhub, scope `authz`;
`authz:admin` for explain and the policy status); a user's token may ask about that user only,
unless idhub's own policy lets the user query others (`core.authz.decisions`). A batch is
decided against one engine, so every answer in it carries the same policy version. Denials, and
allows as `[audit] decisions` says, go to the audit trail in one `record_many` per request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from idhub.bootstrap import Services
from idhub.core.authz.decisions import (
    ADMIN_SCOPE,
    ASK_SCOPE,
    Answer,
    Asker,
    Decisions,
    PolicyAnswers,
    Question,
    canonical_question,
    require_batch_size,
    resource_id_text,
)
from idhub.errors import AccessDenied, InvalidInput, PolicyError
from idhub.web.batching import Batcher
from idhub.web.bearer import (
    BearerError,
    check_bearer,
    require_scope,
    verify_bearer,
    verify_bearer_without_waiting,
)
from idhub.web.middleware import request_context
from idhub.web.oauth import bearer_token
from idhub.web.pdp_openapi import MAX_TEXT, openapi_document
from idhub.web.pdp_records import ToRecord, record_all

MAX_BODY = 2_000_000
_FIELDS = ("user", "sub", "domain", "type", "action", "owner", "dept", "resource_id")
# `resource` members and the request fields they stand for.
_RESOURCE_FIELDS = {"id": "resource_id", "owner": "owner", "dept": "dept"}
# Claims of a valid idhub access token carrying the scope, or `BearerError`.
Authorise = Callable[[Request, str], Mapping[str, Any]]
# Verifies the request's bearer token (any scope) before its body is read; `BearerError`.
Authenticate = Callable[[Request], None]


@dataclass(frozen=True)
class PartiesDue:
    """`check_without_waiting` could not answer because the asking client's registration is
    due for its version check (a database read, once a second): the caller has it done off
    the event loop, once for every check that found it due meanwhile, and asks again."""

    client_id: str


# A check decided on the event loop: the answer, what to record before it, or None (see
# `DecisionApi.check_without_waiting`).
WithoutWaiting = Callable[[Request, bytes], "Response | ToRecord | PartiesDue | None"]
# Brings a client's registration up to date in a worker thread (`PartiesDue`).
Refresh = Callable[[str], Awaitable[frozenset[str]]]
# Writes a `ToRecord` durably (in a worker thread) and then gives its answer.
Record = Callable[[ToRecord], Awaitable[Response]]


# Built once: `json.dumps` given options builds a new encoder on every call, which was most of
# rendering a single decision's answer. The same options as Starlette's `JSONResponse`.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class _Json(JSONResponse):
    """A 200 `JSONResponse` rendered by the shared encoder, its two header lines made
    directly: the same bytes and headers as `JSONResponse(content)`, less CPU."""

    def __init__(self, content: Any) -> None:
        self.status_code = 200
        self.background = None
        self.body = body = _ENCODER.encode(content).encode("utf-8")
        self.raw_headers = [
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"content-type", b"application/json"),
        ]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": code, "error_description": message},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _parse(raw: bytes) -> Any:
    # The server caps what is read (web/limits.py); this bounds what is parsed.
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"request body larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON") from None
    except RecursionError:
        raise InvalidInput("the body is nested too deeply") from None


def _text(item: Mapping[str, Any], key: str, where: str, *, required: bool) -> str:
    value = item.get(key)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{where}.{key} is required")
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise InvalidInput(f"{where}.{key} must be a string of at most {MAX_TEXT} characters")
    return value


def _question(item: Any, where: str, answers: PolicyAnswers, *, client: str | None) -> Question:
    """One request object as a question; `client` is the asker whose own domain is the
    default, None when the domain must be given."""
    if not isinstance(item, Mapping):
        raise InvalidInput(f"{where} must be an object")
    unknown = sorted(set(item) - set(_FIELDS) - {"resource", "actors"})
    if unknown:
        raise InvalidInput(f"{where}: unknown field {unknown[0]!r}")
    # Absent or null: no resource; anything but an object is refused, not taken for "none".
    resource = item.get("resource")
    resource = {} if resource is None else resource
    if not isinstance(resource, Mapping):
        raise InvalidInput(f"{where}.resource must be an object")
    # Each of id/owner/dept is given once, here or in `resource`: a second spelling of the
    # record's owner that is silently dropped would decide on an owner nobody checked.
    given = {
        k: v for k, v in item.items() if v not in (None, "") and k not in ("resource", "actors")
    }
    for key, value in resource.items():
        if key in _RESOURCE_FIELDS and value not in (None, ""):
            field = _RESOURCE_FIELDS[key]
            if field in given:
                raise InvalidInput(f"{where}: give {field} once, not also as resource.{key}")
            given[field] = value
    merged = given
    merged["resource_id"] = resource_id_text(merged.get("resource_id"))
    if not merged.get("user") and not merged.get("sub"):
        raise InvalidInput(f"{where}: give the user as `user` (username) or `sub`")
    parsed = {key: _text(merged, key, where, required=False) for key in _FIELDS}
    for key in ("type", "action"):
        _text(merged, key, where, required=True)
    try:
        actors = answers.actors_of(item.get("actors"))
    except InvalidInput as exc:
        raise InvalidInput(f"{where}.{exc.message}") from None
    try:
        parsed["domain"] = answers.domain_for(parsed["domain"], client=client)
        return canonical_question(
            Question(
                domain=parsed["domain"],
                type=parsed["type"],
                action=parsed["action"],
                user=parsed["user"],
                sub=parsed["sub"],
                owner=parsed["owner"],
                dept=parsed["dept"],
                resource_id=parsed["resource_id"],
                actors=actors,
            )
        )
    except InvalidInput as exc:
        raise InvalidInput(f"{where}.{exc.message}") from None


_FIELD_SET = frozenset(_FIELDS)


def _flat_question(item: Any, answers: PolicyAnswers, *, client: str | None) -> Question | None:
    """`_question` for the shape nearly every single check has - an object of text fields
    only, no `resource` or `actors` object, every text within bounds, the required ones
    given - without `_question`'s general merging and checking (~5% of a single decision's
    CPU). None for anything else and for any field in error: `_question` then decides and
    words the answer, as before."""
    if type(item) is not dict or not _FIELD_SET.issuperset(item):
        return None
    for value in item.values():
        if type(value) is not str or len(value) > MAX_TEXT:
            return None
    get = item.get
    if not get("type") or not get("action") or not (get("user") or get("sub")):
        return None
    try:
        return canonical_question(
            Question(
                domain=answers.domain_for(get("domain", ""), client=client),
                type=item["type"],
                action=item["action"],
                user=get("user", ""),
                sub=get("sub", ""),
                owner=get("owner", ""),
                dept=get("dept", ""),
                resource_id=get("resource_id", ""),
            )
        )
    except InvalidInput:
        return None


def _client_of(claims: Mapping[str, Any]) -> str:
    return str(claims.get("client_id") or claims.get("sub") or "unknown")


def _asker(claims: Mapping[str, Any], parties: Callable[[str], frozenset[str]]) -> Asker:
    client_id = _client_of(claims)
    return Asker(
        client_id=client_id,
        sub=str(claims.get("sub") or ""),
        domains=parties(client_id),
        admin=ADMIN_SCOPE in str(claims.get("scope") or "").split(),
    )


class DecisionApi:
    """The handlers of `/api/v1/authz/*`; each runs in a worker thread, except that a check
    whose every step can be answered from memory is decided on the event loop
    (`check_without_waiting`)."""

    def __init__(
        self,
        *,
        decisions: Decisions,
        authorise: Authorise,
        parties: Callable[[str], frozenset[str]],
        parties_if_fresh: Callable[[str], frozenset[str] | None] | None = None,
    ) -> None:
        self._decisions = decisions
        self._authorise = authorise
        self._parties = parties
        self._parties_if_fresh = parties_if_fresh
        # Set once a worker thread has had a policy answer: loading the first policy reads
        # files and the database, which the event loop must never do.
        self._policy_loaded = False

    def check(self, request: Request, body: Any) -> Response:
        asker = _asker(self._authorise(request, ASK_SCOPE), self._parties)
        answers = self._decisions.current()
        self._policy_loaded = True
        questions, batch = self._questions(body, answers, asker)
        answers = self._current(answers, questions, asker)
        answers.require_may_ask(asker, questions)
        ctx = request_context(request)
        decided, events = answers.decide_batch(questions, client=asker.client_id, ctx=ctx)
        answers.record_events(events)
        return _decided(answers, decided, batch=batch)

    def check_without_waiting(
        self, request: Request, body: Any, claims: Mapping[str, Any]
    ) -> Response | ToRecord | PartiesDue | None:
        """`check` on the event loop for a caller whose token was verified without waiting
        (`claims`): the answer when nothing needs writing, `ToRecord` when audit events must
        be durable before it (a denial), `PartiesDue` when the client's registration is due
        for its version check, None when another step would read the database (a name the
        snapshot lacks), and the caller runs `check` in a worker thread instead. The same
        checks in the same order."""
        if not self._policy_loaded or self._parties_if_fresh is None:
            return None
        claims = require_scope(dict(claims), ASK_SCOPE)
        client_id = _client_of(claims)
        domains = self._parties_if_fresh(client_id)
        if domains is None:
            return PartiesDue(client_id)
        asker = _asker(claims, lambda _client: domains)
        answers = self._decisions.current()
        questions, batch = self._questions(body, answers, asker)
        if answers.unknown_names(questions, asker_sub="" if asker.is_system else asker.sub):
            return None  # `up_to_date` looks these names up in the directory store
        answers.require_may_ask(asker, questions)
        # Read from the request only if something is recorded (a denial, a sampled allow).
        decided, events = answers.decide_batch(
            questions, client=asker.client_id, ctx=lambda: request_context(request)
        )
        response = _decided(answers, decided, batch=batch)
        if not events:
            return response
        return ToRecord(answers=answers, events=events, response=response)

    @staticmethod
    def _questions(body: Any, answers: PolicyAnswers, asker: Asker) -> tuple[list[Question], bool]:
        client = asker.client_id
        batch = isinstance(body, Mapping) and "requests" in body
        if not batch:
            flat = _flat_question(body, answers, client=client)
            if flat is not None:
                return [flat], False
        items = body["requests"] if batch else [body]
        if not isinstance(items, list):
            raise InvalidInput("`requests` must be a non-empty list")
        require_batch_size(len(items))
        questions = [
            _question(item, f"requests[{i}]" if batch else "request", answers, client=client)
            for i, item in enumerate(items)
        ]
        return questions, batch

    def scopes(self, request: Request, body: Any) -> Response:
        asker = _asker(self._authorise(request, ASK_SCOPE), self._parties)
        answers = self._decisions.current()
        question = _question(body, "request", answers, client=asker.client_id)
        answers = self._current(answers, [question], asker)
        answers.require_may_ask(asker, [question])
        answer = answers.scopes(question)
        if answer.username is None:
            who = {"reason": answer.reason}
        else:
            who = {"user": answer.username}
        return JSONResponse({**answer.scope.to_json(), **who, "policy_version": answers.version})

    def explain(self, request: Request, body: Any) -> Response:
        asker = _asker(self._authorise(request, ADMIN_SCOPE), self._parties)
        answers = self._decisions.current()
        question = _question(body, "request", answers, client=None)
        answers = self._current(answers, [question], asker)
        answers.require_may_ask(asker, [question])
        return JSONResponse(answers.explain(question))

    def _current(
        self, answers: PolicyAnswers, questions: list[Question], asker: Asker
    ) -> PolicyAnswers:
        """Answers that know everyone named, the asking user included (a fresh snapshot)."""
        asker_sub = "" if asker.is_system else asker.sub
        return self._decisions.up_to_date(answers, questions, asker_sub=asker_sub)

    def policy(self, request: Request, _body: Any) -> Response:
        self._authorise(request, ADMIN_SCOPE)
        return JSONResponse(self._decisions.policy_status())


def _decided(answers: PolicyAnswers, decided: list[Answer], *, batch: bool) -> Response:
    if not batch:
        one = decided[0]
        return _Json(
            {"allowed": one.allowed, "reason": one.reason, "policy_version": answers.version}
        )
    results = [{"allowed": a.allowed, "reason": a.reason} for a in decided]
    return _Json({"policy_version": answers.version, "results": results})


def _endpoint(
    handler: Callable[[Request, Any], Response],
    *,
    authenticate: Authenticate,
    read_body: bool = True,
    without_waiting: WithoutWaiting | None = None,
    record: Record | None = None,
    refresh: Refresh | None = None,
) -> Any:
    def answer(request: Request, raw: bytes | None) -> Response:
        # Nobody without a valid token gets the body parsed.
        authenticate(request)
        return handler(request, _parse(raw) if raw is not None else None)

    async def run(request: Request, receive: Receive) -> Response:
        try:
            # Read here (the server caps its size), then one hop to a worker thread for what
            # may block on the database: the revocation check and the audit of decisions.
            raw = await _body(receive) if read_body else None
            if without_waiting is not None and raw is not None:
                # A thread hop costs more CPU than the rest of a single decision: what can be
                # decided from memory is decided here, and only a durable audit write (or a
                # step that would read the database) goes to a worker thread.
                done = without_waiting(request, raw)
                if isinstance(done, PartiesDue):
                    # Every check that finds the registration due while one thread reads it
                    # waits for that one read, instead of each taking the thread path (with
                    # 32 connections that was ~3% of all checks, a thread hop each).
                    due, done = done, None
                    if refresh is not None and await _refreshed(refresh, due.client_id):
                        done = without_waiting(request, raw)
                    if isinstance(done, PartiesDue):
                        done = None
                if isinstance(done, Response):
                    return done
                if done is not None:
                    assert record is not None
                    return await record(done)
            return await run_in_threadpool(answer, request, raw)
        except BearerError as exc:
            return exc.response()
        except InvalidInput as exc:
            return _error(400, "invalid_request", exc.message)
        except AccessDenied as exc:
            return _error(403, "access_denied", exc.message)
        except PolicyError as exc:
            # No policy could be loaded at all (a rejected reload keeps the old one).
            return _error(503, "policy_unavailable", exc.message)

    return _Endpoint(run)


async def _refreshed(refresh: Refresh, client_id: str) -> bool:
    """Whether the client's registration was brought up to date; on an error the check takes
    the thread path, which meets the same error and answers it as it always did."""
    try:
        await refresh(client_id)
    except Exception:
        return False
    return True


class _Endpoint:
    """A decision API route as a plain ASGI app rather than a Starlette endpoint function:
    `request_response` wrapped each request in a second exception-handler layer (the
    application's own, outside the router, still maps every error as before) and read the
    body through `Request.stream`; with the `Request` it built, ~10% of a single decision's
    CPU on the event loop (docs/performance.md, Authorization)."""

    def __init__(self, run: Callable[[Request, Receive], Awaitable[Response]]) -> None:
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._run(Request(scope, receive), receive)
        await response(scope, receive, send)


async def _body(receive: Receive) -> bytes:
    """The whole request body (web/limits.py caps what `receive` lets through)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parties_refresh(parties: Callable[[str], frozenset[str]]) -> Refresh:
    """`Refresh` through one worker thread: the checks that find the registration due while
    it is read queue behind that read and are answered together, each with its own result."""

    def refresh_all(client_ids: Sequence[str]) -> list[frozenset[str] | Exception]:
        answered: list[frozenset[str] | Exception] = []
        for client_id in client_ids:
            try:
                answered.append(parties(client_id))
            except Exception as exc:
                answered.append(exc)
        return answered

    refreshes: Batcher[str, frozenset[str]] = Batcher(refresh_all, concurrency=1)
    return refreshes.submit


def _claims_without_waiting(
    request: Request, services: Services
) -> Mapping[str, Any] | PartiesDue | None:
    """The caller's verified claims on the event loop; `PartiesDue` for a remembered token
    whose client's standing is due for the registry's version check (one shared read brings
    it up to date, not a thread each); None when the check must run in a worker thread."""
    token = bearer_token(request)
    claims = verify_bearer_without_waiting(token, services)
    if claims is not None:
        return claims
    client_id = services.access_tokens.remembered_client(token or "")
    if client_id is not None and services.clients.enabled_if_fresh(client_id) is None:
        return PartiesDue(client_id)
    return None


def routes(services: Services) -> list[BaseRoute]:
    def authenticate(request: Request) -> None:
        request.state.bearer_claims = verify_bearer(bearer_token(request), services)

    def authorise(request: Request, scope: str) -> Mapping[str, Any]:
        claims = getattr(request.state, "bearer_claims", None)
        if claims is None:
            return check_bearer(bearer_token(request), services, scope=scope)
        return require_scope(claims, scope)

    decisions = services.decisions
    api = DecisionApi(
        decisions=decisions,
        authorise=authorise,
        parties=services.clients.party_domains,
        parties_if_fresh=services.clients.party_domains_if_fresh,
    )

    def check_without_waiting(
        request: Request, raw: bytes
    ) -> Response | ToRecord | PartiesDue | None:
        claims = _claims_without_waiting(request, services)
        if not isinstance(claims, Mapping):
            return claims
        return api.check_without_waiting(request, _parse(raw), claims)

    issuer = services.settings.server.issuer

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(
            prometheus_text(decisions.policy_status()), media_type="text/plain; version=0.0.4"
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document(issuer))

    def guarded(handler: Callable[[Request, Any], Response], *, read_body: bool = True) -> Any:
        return _endpoint(handler, authenticate=authenticate, read_body=read_body)

    # Two batches in the threadpool at once: one can be committing while the next is handed
    # over (the audit store commits what queued meanwhile in one transaction).
    records: Batcher[ToRecord, Response] = Batcher(record_all, concurrency=2)
    check = _endpoint(
        api.check,
        authenticate=authenticate,
        without_waiting=check_without_waiting,
        record=records.submit,
        refresh=_parties_refresh(services.clients.party_domains),
    )
    return [
        Route("/api/v1/authz/check", check, methods=["POST"]),
        Route("/api/v1/authz/scopes", guarded(api.scopes), methods=["POST"]),
        Route("/api/v1/authz/explain", guarded(api.explain), methods=["POST"]),
        Route("/api/v1/authz/policy", guarded(api.policy, read_body=False), methods=["GET"]),
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
