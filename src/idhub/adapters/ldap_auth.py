"""Sign-in for users whose password lives in LDAP: find the entry, then bind as it.

The entry is found by a service-account search whose filter carries the username escaped per
RFC 4515 (`escape_filter_chars`), so `*)(uid=*` matches nobody instead of everybody, and
the entry must carry the stable id idhub knows for that user (a recycled username cannot
sign in as someone else's idhub account). The password is then checked by a simple bind as
that DN; idhub never stores or logs it. An empty password is refused before any bind: LDAP
treats a simple bind with no password as an anonymous bind that "succeeds" (RFC 4513 5.1.2).

Connections are pooled (one pool of service-account connections for searches, one of
connections rebound per attempt) and every network step has a timeout; an unreachable
directory raises `DirectoryUnavailable` so the login page can say so.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldap3.utils.conv import escape_filter_chars

from idhub.adapters.ldap import DirectoryUnreachable, make_server, open_connection
from idhub.config import LdapSourceSettings
from idhub.core.directory.dn import MappingProblem
from idhub.core.directory.mapping import stable_id
from idhub.core.identity import User
from idhub.errors import AuthenticationFailed, DirectoryError, DirectoryUnavailable

log = logging.getLogger(__name__)

_INVALID_CREDENTIALS = 49


class _Pool:
    """A bounded set of open connections; a broken one is dropped, not returned."""

    def __init__(self, size: int, factory: Callable[[], ldap3.Connection]) -> None:
        self._idle: queue.LifoQueue[ldap3.Connection] = queue.LifoQueue(maxsize=size)
        self._factory = factory
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self, timeout: float) -> Iterator[ldap3.Connection]:
        if not self._slots.acquire(timeout=timeout):
            raise DirectoryUnavailable("all directory connections are busy")
        conn: ldap3.Connection | None = None
        healthy = False
        try:
            try:
                conn = self._idle.get_nowait()
                if conn.closed:
                    conn = None
            except queue.Empty:
                conn = None
            if conn is None:
                conn = self._factory()
            yield conn
            healthy = True
        finally:
            if conn is not None:
                if healthy and not conn.closed:
                    self._idle.put_nowait(conn)
                else:
                    _close(conn)
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                _close(self._idle.get_nowait())
            except queue.Empty:
                return


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except LDAPException:
        pass


class LdapBindVerifier:
    """`PasswordVerifier` (contract 6) for users of one LDAP source."""

    def __init__(self, settings: LdapSourceSettings) -> None:
        self.settings = settings
        self._server = make_server(settings)
        size = max(1, settings.pool_size)
        self._search_pool = _Pool(size, self._service_connection)
        self._bind_pool = _Pool(size, self._bind_connection)

    def _service_connection(self) -> ldap3.Connection:
        try:
            return open_connection(self.settings, server=self._server)
        except DirectoryUnreachable as exc:
            raise DirectoryUnavailable(str(exc)) from exc
        except DirectoryError as exc:
            # The service account itself is refused: for a user that is "try later" too.
            log.error("LDAP source %s: %s", self.settings.name, exc)
            raise DirectoryUnavailable(str(exc)) from exc

    def _bind_connection(self) -> ldap3.Connection:
        conn = ldap3.Connection(
            self._server,
            auto_bind=ldap3.AUTO_BIND_NONE,
            read_only=True,
            receive_timeout=max(1, math.ceil(self.settings.timeout)),
            raise_exceptions=False,
        )
        try:
            conn.open()
            if self.settings.start_tls:
                conn.start_tls()
        except LDAPException as exc:
            raise DirectoryUnavailable(f"{self.settings.url} cannot be reached") from exc
        return conn

    def find_dn(self, username: str, external_id: str | None) -> str:
        s = self.settings
        key = s.attributes.external_id
        search_filter = (
            f"(&{s.user_filter}({s.attributes.username}={escape_filter_chars(username)}))"
        )
        with self._search_pool.connection(s.connect_timeout) as conn:
            try:
                conn.search(
                    s.user_base,
                    search_filter,
                    search_scope=ldap3.SUBTREE,
                    attributes=[key],
                    size_limit=2,
                )
            except LDAPException as exc:
                conn.unbind()  # the pool drops it
                raise DirectoryUnavailable(f"{s.url}: search failed") from exc
            code = int(conn.result.get("result", 0))
            entries = [r for r in (conn.response or ()) if r.get("type") == "searchResEntry"]
        if code not in (0, 4) or len(entries) != 1:
            if code not in (0, 4, 32):
                raise DirectoryUnavailable(
                    f"{s.url}: search answered {conn.result.get('description')}"
                )
            raise AuthenticationFailed("unknown_user")
        entry = entries[0]
        if external_id is not None:
            raw = {k.lower(): v for k, v in (entry.get("raw_attributes") or {}).items()}
            try:
                found = stable_id(key, raw.get(key.lower()))
            except MappingProblem:
                found = None
            if found != external_id:
                raise AuthenticationFailed("unknown_user")
        return str(entry["dn"])

    def verify(self, user: User, password: str) -> None:
        if user.disabled:
            raise AuthenticationFailed("disabled")
        if not password:
            raise AuthenticationFailed("bad_password")
        dn = self.find_dn(user.username, user.external_id)
        with self._bind_pool.connection(self.settings.connect_timeout) as conn:
            try:
                ok = conn.rebind(user=dn, password=password)
            except LDAPBindError:
                ok = False
            except LDAPException as exc:
                conn.unbind()
                raise DirectoryUnavailable(f"{self.settings.url}: bind failed") from exc
            finally:
                # ldap3 keeps the credentials on the connection object; do not let them linger.
                conn.password = None
            if not ok:
                code = int((conn.result or {}).get("result", _INVALID_CREDENTIALS))
                if conn.closed or code not in (_INVALID_CREDENTIALS, 50, 53):
                    conn.unbind()
                    raise DirectoryUnavailable(f"{self.settings.url}: bind failed")
                raise AuthenticationFailed("bad_password")

    def close(self) -> None:
        self._search_pool.close()
        self._bind_pool.close()
