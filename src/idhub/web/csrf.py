"""CSRF protection for idhub's own forms (login, consent, logout confirmation).

A pre-session cookie holds a random value; each form carries HMAC(server key, that value).
A cross-site page can make the browser send the cookie but can neither read it nor compute the
HMAC, so it cannot produce a matching form field ("HMAC-signed double submit"). The cookie
exists before anyone signs in, so the login form itself is protected (login CSRF).
"""

from __future__ import annotations

import hmac

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from idhub.core.crypto import KeyedHasher, new_token
from idhub.core.secret import Secret

CSRF_COOKIE = "idhub_csrf"
CSRF_FIELD = "csrf_token"
_COOKIE_MAX_LEN = 100


class CsrfGuard:
    def __init__(self, secret: Secret, *, secure: bool) -> None:
        self._hasher = KeyedHasher(secret, "csrf")
        self._secure = secure

    def token(self, request: Request) -> tuple[str, str | None]:
        """The form token for this browser, and a new cookie value to set (None if the browser
        already has one)."""
        current = request.cookies.get(CSRF_COOKIE)
        if current and 20 <= len(current) <= _COOKIE_MAX_LEN:
            return self._hasher.hash(current), None
        fresh = new_token(24)
        return self._hasher.hash(fresh), fresh

    def check(self, request: Request, form: FormData) -> bool:
        """True if the submitted form token matches this browser's cookie."""
        cookie = request.cookies.get(CSRF_COOKIE)
        submitted = form.get(CSRF_FIELD)
        if not cookie or len(cookie) > _COOKIE_MAX_LEN or not isinstance(submitted, str):
            # Same work either way: failing fast would not leak anything useful, but keep it
            # uniform.
            hmac.compare_digest(self._hasher.hash("x"), "0" * 64)
            return False
        return self._hasher.check(cookie, submitted) if submitted else False

    def set_cookie(self, response: Response, value: str | None) -> None:
        if value is None:
            return
        # A browser-session cookie: closing the browser forgets it, which is fine for a form.
        response.set_cookie(
            CSRF_COOKIE,
            value,
            httponly=True,
            samesite="lax",
            secure=self._secure,
            path="/",
        )
