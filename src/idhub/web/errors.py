"""Maps errors to responses in one place. Nobody ever sees a traceback: unexpected errors
are logged with the request id and answered with a short sentence carrying that id."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from idhub import errors
from idhub.bootstrap import translate_failure
from idhub.core.request_budget import OverBudget
from idhub.web.security_headers import allowed_methods

log = logging.getLogger("idhub.web")

STATUS: Mapping[type[errors.IdhubError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.InvalidInput: 400,
    errors.AccessDenied: 403,
    errors.AuthenticationFailed: 401,
    errors.PolicyError: 400,
    errors.StorageUnavailable: 503,
    errors.StorageError: 503,
    errors.AuditError: 503,
    errors.DirectoryError: 502,
    errors.ConfigError: 500,
}

# What a user reads instead of the error's own message, which names internals (the store
# method that failed) that belong in the log only.
MESSAGES: Mapping[type[errors.IdhubError], str] = {
    errors.StorageUnavailable: "The database cannot be reached right now; try again shortly.",
    # The admin's hint (run `idhub init`) is in the log line; a person signing in gets this.
    errors.SchemaNotReady: "idhub is not set up completely yet; try again later.",
}


def status_for(exc: errors.IdhubError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def message_for(exc: errors.IdhubError) -> str:
    for cls in type(exc).__mro__:
        if cls in MESSAGES:
            return MESSAGES[cls]
    return exc.message


def wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    localised: bool = False,
) -> Response:
    """The error as JSON, or as the error page for a browser. `localised`: `message` is a
    generic sentence with a translation under "http_<code>" (web/i18n.py), which a browser gets
    in its page's language like every other page."""
    request_id = getattr(request.state, "request_id", None)
    if wants_html(request):
        from idhub.web.templating import render_error

        key = f"http_{code}" if localised else None
        page = render_error(request, status=status, title=code, message=message, key=key)
        page.headers.update(headers or {})
        return page
    body: dict[str, Any] = {"error": code, "error_description": message}
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


def over_budget(request: Request, refusal: OverBudget) -> Response:
    """429 for a request refused by core/request_budget.py: the translated page for a browser,
    JSON for a script (the passkey options), `Retry-After` for both."""
    return error_response(
        request,
        429,
        "too_many_requests",
        "Too many requests from this address; try again in a minute.",
        {"Retry-After": str(refusal.retry_after)},
        localised=True,
    )


# Seconds a client is asked to wait after a 503: a database or audit outage is either over
# in a moment (a restart, a fail-over) or long enough that retrying every second is harmless.
RETRY_AFTER = "1"


async def _idhub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.IdhubError)
    status = status_for(exc)
    if status >= 500:
        # One line per failed request, no traceback: during an outage every request fails
        # the same way, and the cause (`exc.__cause__`) is the database's, not idhub's.
        log.error("request %s failed: %s", getattr(request.state, "request_id", "-"), exc)
    generic = any(cls in MESSAGES for cls in type(exc).__mro__)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return error_response(request, status, exc.code, message_for(exc), headers, localised=generic)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # RFC 9110 15.5.6; a path served by one route per method needs all of them named.
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(request, exc.status_code, code, str(exc.detail), headers, localised=True)


async def _unexpected(request: Request, exc: Exception) -> Response:
    request_id = getattr(request.state, "request_id", "-")
    log.exception("unexpected error in request %s", request_id)
    return error_response(
        request,
        500,
        "server_error",
        f"An internal error occurred (request {request_id}).",
        localised=True,
    )


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Any]]:
    return {
        errors.IdhubError: _idhub_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }


Handler = Callable[[Request, Exception], Awaitable[Response]]


class FailureAnswers:
    """What the request layer (web/middleware.py) answers for an exception that left the
    application, in the order the handlers were once stacked: idhub's errors and HTTP errors
    by their handler; then an exception that is idhub's error in disguise (a database failure
    a store did not translate, `bootstrap.translate_failure`) as that error - a 503 saying the
    database is unreachable or not set up, not an "internal error" 500; anything else is
    `unexpected`."""

    def __init__(self, *, debug: bool = False) -> None:
        self.handlers: dict[Any, Handler] = {
            cls: handler for cls, handler in exception_handlers().items() if cls is not Exception
        }
        # `debug = true` (refused in production mode): Starlette's traceback page.
        self._debug = ServerErrorMiddleware(_no_app, debug=True) if debug else None

    def handled(self, exc: Exception) -> tuple[Handler, Exception] | None:
        """The handler for `exc` and the error it is handed, or None when it is unexpected."""
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler, exc
        known = translate_failure(exc)
        return (_idhub_error, known) if known is not None else None

    async def unexpected(self, request: Request, exc: Exception) -> Response:
        if self._debug is not None:
            return await run_in_threadpool(self._debug.debug_response, request, exc)
        return await _unexpected(request, exc)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("only the debug page of ServerErrorMiddleware is used")
