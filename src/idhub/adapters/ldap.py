"""Reading an LDAP / Active Directory source with ldap3.

Searches are paged (RFC 2696 simple paged results) and handed to the caller a page at a
time, so a 100,000-user directory never sits in memory as raw entries. A result the server
cut short (size or time limit) is reported, never silently treated as complete: the sync's
safety brake depends on it. Library errors are translated to `DirectoryError` here.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException, LDAPSocketOpenError, LDAPStartTLSError

from idhub.config import LdapSourceSettings
from idhub.core.directory.dn import MappingProblem
from idhub.core.directory.mapping import (
    SourceDepartment,
    SourceGroup,
    SourceUser,
    map_department,
    map_group,
    map_user,
    stable_id,
    texts,
)
from idhub.core.directory.ports import TruncatedResult
from idhub.errors import DirectoryError

# Result codes that mean "you did not get everything" (RFC 4511 4.1.9).
_TRUNCATING = {3: "timeLimitExceeded", 4: "sizeLimitExceeded", 11: "adminLimitExceeded"}


class DirectoryUnreachable(DirectoryError):
    code = "directory_unreachable"


def make_server(settings: LdapSourceSettings) -> ldap3.Server:
    parts = urlsplit(settings.url)
    use_ssl = parts.scheme == "ldaps"
    tls = None
    if use_ssl or settings.start_tls:
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if settings.tls_verify else ssl.CERT_NONE,
            ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return ldap3.Server(
        parts.hostname or "localhost",
        port=parts.port or (636 if use_ssl else 389),
        use_ssl=use_ssl,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=settings.connect_timeout,
    )


def open_connection(
    settings: LdapSourceSettings,
    *,
    user: str | None = None,
    password: str | None = None,
    server: ldap3.Server | None = None,
) -> ldap3.Connection:
    """A bound connection (service account unless `user` is given). Raises DirectoryError."""
    server = server or make_server(settings)
    if user is None:
        user = settings.bind_dn or None
        password = settings.bind_password.reveal() if settings.bind_password else None
    conn = ldap3.Connection(
        server,
        user=user,
        password=password,
        auto_bind=ldap3.AUTO_BIND_NONE,
        read_only=True,
        receive_timeout=max(1, math.ceil(settings.timeout)),
        return_empty_attributes=False,
        raise_exceptions=False,
    )
    _lean_entries(conn)
    try:
        conn.open()
        if settings.start_tls:
            conn.start_tls()
        if not conn.bind():
            description = conn.result.get("description", "bind failed")
            conn.unbind()
            raise DirectoryError(
                f"{settings.url}: the service account could not bind ({description})"
            )
    except LDAPStartTLSError as exc:
        raise DirectoryUnreachable(f"{settings.url}: StartTLS failed: {exc}") from exc
    except LDAPSocketOpenError as exc:
        raise DirectoryUnreachable(f"{settings.url} cannot be reached: {_short(exc)}") from exc
    except LDAPException as exc:
        raise DirectoryUnreachable(f"{settings.url}: {_short(exc)}") from exc
    return conn


def _lean_entries(conn: ldap3.Connection) -> None:
    """Decode search entries to raw bytes only.

    ldap3 turns every entry into two dicts, raw and "formatted" (schema lookups, config reads
    and unicode conversion per value); a sync only reads the raw one, and the formatting was
    about a third of a full sync's time. Other messages keep ldap3's own decoding.
    """
    strategy: Any = conn.strategy
    original = strategy.decode_response_fast

    def decode(message: dict[str, Any]) -> dict[str, Any]:
        if message.get("protocolOp") != 4 or message.get("controls"):
            return original(message)  # type: ignore[no-any-return]
        payload = message["payload"]
        raw: dict[str, list[bytes]] = {}
        for attribute in payload[1][3]:
            name = bytes(attribute[3][0][3]).decode("utf-8", errors="replace").lower()
            raw[name] = [bytes(value[3]) for value in attribute[3][1][3]]
        return {
            "type": "searchResEntry",
            "dn": bytes(payload[0][3]).decode("utf-8", errors="replace"),
            "raw_attributes": raw,
            "attributes": {},
        }

    strategy.decode_response_fast = decode


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@dataclass
class UserPage:
    users: list[SourceUser]
    problems: list[str]


class LdapDirectory:
    """One configured LDAP source, read through one service-account connection."""

    def __init__(self, settings: LdapSourceSettings) -> None:
        self.settings = settings
        self._conn: ldap3.Connection | None = None

    # ------------------------------------------------------------ connection

    def _connection(self) -> ldap3.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(self.settings)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.unbind()
            except LDAPException:
                pass
            self._conn = None

    # ------------------------------------------------------------ paging

    def _pages(
        self, base: str, search_filter: str, attributes: list[str]
    ) -> Iterator[list[tuple[str, dict[str, list[bytes]]]]]:
        conn = self._connection()
        cookie: Any = None
        seen = 0
        while True:
            try:
                conn.search(
                    base,
                    search_filter,
                    search_scope=ldap3.SUBTREE,
                    attributes=attributes,
                    paged_size=self.settings.page_size,
                    paged_cookie=cookie,
                )
            except LDAPException as exc:
                self.close()
                raise DirectoryUnreachable(
                    f"{self.settings.url}: search under {base} failed: {_short(exc)}"
                ) from exc
            result = conn.result
            code = int(result.get("result", 0))
            page: list[tuple[str, dict[str, list[bytes]]]] = []
            for item in conn.response or ():
                if item.get("type") != "searchResEntry":
                    continue  # referrals and references are not entries of this source
                raw = item.get("raw_attributes") or {}
                if type(raw) is not dict:  # ldap3's own decoding (see _lean_entries)
                    raw = {k.lower(): list(v) for k, v in raw.items()}
                page.append((item["dn"], raw))
            seen += len(page)
            if code in _TRUNCATING:
                raise TruncatedResult(
                    f"the directory answered {_TRUNCATING[code]} after {seen} entries under {base}",
                    seen=seen,
                )
            if code == 32:  # noSuchObject: the base DN is wrong
                raise DirectoryError(f"{self.settings.url}: base DN {base!r} does not exist")
            if code != 0:
                raise DirectoryError(
                    f"{self.settings.url}: search under {base} failed: "
                    f"{result.get('description')} {result.get('message') or ''}".strip()
                )
            yield page
            controls = result.get("controls") or {}
            cookie = controls.get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                return

    def _since(self, base_filter: str, since: str | None) -> str:
        if since is None:
            return base_filter
        mark = self.settings.attributes.modified
        if self.settings.change_mark == "usn":
            # AD has only >=; a USN is an integer, so "greater than" is ">= since+1".
            try:
                return f"(&{base_filter}({mark}>={int(since) + 1}))"
            except ValueError:
                return base_filter
        # GeneralizedTime has second resolution: re-read the boundary second (idempotent).
        return f"(&{base_filter}({mark}>={since}))"

    # ------------------------------------------------------------ entries

    def user_pages(self, since: str | None = None) -> Iterator[UserPage]:
        s = self.settings
        attributes = s.attributes.user_attributes()
        department_base = s.department_base or s.user_base
        for page in self._pages(s.user_base, self._since(s.user_filter, since), attributes):
            users: list[SourceUser] = []
            problems: list[str] = []
            for dn, raw in page:
                try:
                    users.append(
                        map_user(
                            dn,
                            raw,
                            attributes=s.attributes,
                            department_from=s.department_from,  # type: ignore[arg-type]
                            department_base=department_base,
                        )
                    )
                except MappingProblem as exc:
                    problems.append(str(exc))
            yield UserPage(users, problems)

    def user_id_pages(self) -> Iterator[list[str]]:
        """Only the stable ids of every user: the cheap pass that finds deletions."""
        s = self.settings
        key = s.attributes.external_id
        for page in self._pages(s.user_base, s.user_filter, [key]):
            ids = []
            for _dn, raw in page:
                try:
                    value = stable_id(key, raw.get(key.lower()))
                except MappingProblem:
                    continue
                if value:
                    ids.append(value)
            yield ids

    def groups(self, since: str | None = None) -> tuple[list[SourceGroup], list[str]]:
        s = self.settings
        a = s.attributes
        wanted = sorted(
            {a.external_id, a.group_name, a.member, "uniqueMember", a.modified}
            | ({a.member_of} if s.membership == "memberOf" else set())
        )
        groups: list[SourceGroup] = []
        problems: list[str] = []
        base = s.group_base or s.user_base
        for page in self._pages(base, self._since(s.group_filter, since), [w for w in wanted if w]):
            for dn, raw in page:
                try:
                    groups.append(map_group(dn, raw, attributes=a))
                except MappingProblem as exc:
                    problems.append(str(exc))
        return groups, problems

    def departments(self, since: str | None = None) -> list[SourceDepartment]:
        s = self.settings
        if s.department_from != "dn":
            return []
        a = s.attributes
        base = s.department_base or s.user_base
        wanted = [w for w in (a.external_id, "ou", a.manager, a.modified) if w]
        out: list[SourceDepartment] = []
        for page in self._pages(base, self._since(s.department_filter, since), wanted):
            for dn, raw in page:
                try:
                    department = map_department(dn, raw, attributes=a, base=base)
                except MappingProblem:
                    continue
                if department is not None:
                    out.append(department)
        return out

    def member_of(self) -> dict[str, tuple[str, ...]]:
        """User DN -> the groups its `memberOf` names (AD, or OpenLDAP's memberof overlay)."""
        s = self.settings
        name = s.attributes.member_of
        out: dict[str, tuple[str, ...]] = {}
        for page in self._pages(s.user_base, s.user_filter, [name]):
            for dn, raw in page:
                out[dn] = texts(raw.get(name.lower()))
        return out

    def probe(self) -> dict[str, Any]:
        """Connects, binds and reads the root DSE's basics, for `idhub directory test`."""
        conn = self._connection()
        who = None
        try:
            who = conn.extend.standard.who_am_i()
        except LDAPException:
            who = None
        return {
            "url": self.settings.url,
            "tls": "ldaps"
            if conn.server.ssl
            else ("starttls" if self.settings.start_tls else "none"),
            "bound_as": who or self.settings.bind_dn or "(anonymous)",
        }
