""" "Never in the log": after every test, the audit trail of every database the test touched
(and every JSON-lines export or sink file under its tmp_path) is scanned for secrets.

What counts as a leak:
- a value some test registered with the `known_secrets` fixture (passwords, client secrets,
  codes, tokens ...) or the suite's server secret key, anywhere in an event's values;
- a JWT (compact JWS) or a PEM private key, anywhere;
- a string whose digest is stored in that same database as an authorization code, a session
  cookie (SHA-256), a client secret or a refresh token (HMAC under the test secret key), so
  codes, cookies and refresh tokens are caught even when no test registered them;
- a long random-looking value under a key that names a token, secret, code or password.

The engine listener notes every database a test connects to, whoever made the engine
(`make_services`, `make_live_server`, the in-process CLI), so nothing needs to opt in.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from idhub.config import Secret
from idhub.core.audit import SECRET_SHAPE
from idhub.core.crypto import derive_key

# Base64url runs (codes, tokens, cookies) and wider runs (standard base64, dotted values).
_CANDIDATES = (re.compile(r"[A-Za-z0-9_-]{16,}"), re.compile(r"[A-Za-z0-9_\-~.+/=]{16,}"))
_RANDOM = re.compile(
    r"(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{32,}"
)
_SECRETISH_KEY = re.compile(r"token|secret|code|passw|assertion|cookie", re.I)
_HARMLESS_KEY = re.compile(r"(_id|_ids|_hash|_type|_types|_method|_hint|jti|_uri|_name)$", re.I)
_MAX_FILE = 50 * 1024 * 1024


@dataclass
class KnownSecrets:
    """Secret values the suite knows. Register anything a flow handles in clear:
    `known_secrets.add(password, client_secret, code, tokens["refresh_token"])`.
    Values shorter than 8 characters are ignored (they would match by accident)."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: object) -> None:
        for value in values:
            if isinstance(value, Secret):
                value = value.reveal()
            if isinstance(value, str) and len(value) >= 8:
                self.values.add(value)


class EngineTracker:
    """Remembers the URL of every engine that opens a connection while a test runs."""

    def __init__(self) -> None:
        self.urls: set[str] = set()
        event.listen(Engine, "engine_connect", self._seen)

    def _seen(self, conn: Any) -> None:
        self.urls.add(conn.engine.url.render_as_string(hide_password=False))

    def take(self) -> set[str]:
        urls, self.urls = self.urls, set()
        return urls


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key path, string) for every string value inside a JSON value; keys are skipped."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _strings(item, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{key}[{i}]")


class Scanner:
    def __init__(self, secret_key: str, known: KnownSecrets) -> None:
        self._known = known
        master = Secret(secret_key)
        self._hmac_keys = {
            "client secret": derive_key(master, "hmac:client-secret"),
            "refresh token": derive_key(master, "hmac:refresh-token"),
        }
        self._secret_key = secret_key

    def check_entries(
        self, entries: list[tuple[str, str, str]], digests: dict[str, set[str]]
    ) -> list[str]:
        """`entries` are (where, field, value). One substring search per secret over all
        values joined, so the scan stays cheap however many events a test wrote."""
        problems: list[str] = []
        blob = "\x00".join(value for _, _, value in entries)
        for secret in self._known.values | {self._secret_key}:
            if secret in blob:
                problems.extend(
                    f"{where} {name}: holds a registered secret value"
                    for where, name, value in entries
                    if secret in value
                )
        if SECRET_SHAPE.search(blob):
            problems.extend(
                f"{where} {name}: holds a JWT or a private key"
                for where, name, value in entries
                if SECRET_SHAPE.search(value)
            )
        any_digest = any(digests.values())
        for where, name, value in entries:
            leaf = name.rsplit(".", 1)[-1]
            if (
                _SECRETISH_KEY.search(leaf)
                and not _HARMLESS_KEY.search(leaf)
                and _RANDOM.fullmatch(value)
            ):
                problems.append(f"{where} {name}: a token-shaped value under a secret-ish key")
            if any_digest and len(value) >= 16:
                problems.extend(f"{where} {name}: {k}" for k in self._digest_hits(value, digests))
        return problems

    def _digest_hits(self, value: str, digests: dict[str, set[str]]) -> Iterator[str]:
        found = {value}
        for pattern in _CANDIDATES:
            found.update(pattern.findall(value))
        for candidate in found:
            data = candidate.encode("utf-8")
            plain = hashlib.sha256(data).hexdigest()
            if plain in digests.get("sha256", ()):
                yield "an authorization code or session cookie stored in this database"
            for label, key in self._hmac_keys.items():
                if hmac.new(key, data, hashlib.sha256).hexdigest() in digests.get(label, ()):
                    yield f"a {label} stored in this database"

    def scan_database(self, url: str) -> list[str]:
        if url.startswith("sqlite") and not Path(url.split(":///", 1)[-1]).exists():
            return []
        engine = create_engine(url)
        try:
            try:
                conn = engine.connect()
            except SQLAlchemyError:
                return []  # the database itself is gone (a test made and dropped it)
            with conn:
                try:
                    rows = conn.execute(
                        text(
                            "SELECT seq, event_type, actor_id, target, client_ip, user_agent,"
                            " request_id, details FROM audit_events"
                        )
                    ).all()
                except SQLAlchemyError:
                    return []  # no audit table (never migrated, or a test dropped it)
                if not rows:
                    return []
                digests = _digests(conn)
        finally:
            engine.dispose()
        entries: list[tuple[str, str, str]] = []
        for row in rows:
            try:
                details = json.loads(row[7])
            except ValueError:
                details = row[7]
            fields = {"actor_id": row[2], "target": row[3], "client_ip": row[4],
                      "user_agent": row[5], "request_id": row[6], "details": details}  # fmt: skip
            where = f"audit event {row[0]} ({row[1]}) in {_short(url)}"
            entries.extend((where, name, value) for name, value in _strings(fields))
        return self.check_entries(entries, digests)

    def scan_files(self, paths: Iterable[Path]) -> list[str]:
        entries: list[tuple[str, str, str]] = []
        for path in paths:
            if path.stat().st_size > _MAX_FILE:
                continue
            opener: Any = gzip.open if path.suffix == ".gz" else open
            try:
                with opener(path, "rt", encoding="utf-8") as handle:
                    for number, line in enumerate(handle, start=1):
                        try:
                            data = json.loads(line)
                        except ValueError:
                            data = line
                        where = f"{path.name}:{number}"
                        entries.extend((where, name, value) for name, value in _strings(data))
            except (OSError, EOFError, UnicodeDecodeError):
                continue
        return self.check_entries(entries, {})


def _digests(conn: Any) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"sha256": set(), "client secret": set(), "refresh token": set()}
    queries = {
        "sha256": ("SELECT code_hash FROM authorization_codes", "SELECT id_hash FROM sso_sessions"),
        "client secret": ("SELECT secret_hash FROM clients WHERE secret_hash IS NOT NULL",),
        "refresh token": ("SELECT token_hash FROM refresh_tokens",),
    }
    for label, statements in queries.items():
        for statement in statements:
            try:
                found[label].update(r[0] for r in conn.execute(text(statement)))
            except SQLAlchemyError:
                conn.rollback()
    return found


def _short(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def sink_files(root: Path) -> list[Path]:
    return [p for pattern in ("*.jsonl", "*.jsonl.gz") for p in root.rglob(pattern) if p.is_file()]
