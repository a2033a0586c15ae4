"""Registered clients in the `clients` table, plus the change counter other processes watch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary, translate_storage_errors
from idhub.adapters.db import change_counters, clients
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.clients import Client
from idhub.errors import Conflict

COUNTER = "clients"


def bump_counter(conn: Connection, name: str) -> None:
    """Increments a named change counter (creating it at 1)."""
    changed = conn.execute(
        update(change_counters)
        .where(change_counters.c.name == name)
        .values(value=change_counters.c.value + 1)
    ).rowcount
    if not changed:
        try:
            with conn.begin_nested():
                conn.execute(insert(change_counters).values(name=name, value=1))
        except IntegrityError:
            conn.execute(
                update(change_counters)
                .where(change_counters.c.name == name)
                .values(value=change_counters.c.value + 1)
            )


def read_counter(conn: Connection, name: str) -> int:
    value = conn.execute(
        select(change_counters.c.value).where(change_counters.c.name == name)
    ).scalar()
    return int(value or 0)


def _to_client(row: Row[Any]) -> Client:
    m = row._mapping
    return Client(
        client_id=m["client_id"],
        name=m["name"] or "",
        public=bool(m["public"]),
        first_party=bool(m["first_party"]),
        token_endpoint_auth_method=m["token_endpoint_auth_method"],
        redirect_uris=tuple(m["redirect_uris"] or ()),
        post_logout_redirect_uris=tuple(m["post_logout_redirect_uris"] or ()),
        grant_types=tuple(m["grant_types"] or ()),
        response_types=tuple(m["response_types"] or ()),
        scopes=tuple((m["scope"] or "").split()),
        jwks=m["jwks"],
        id_token_alg=m["id_token_signed_response_alg"],
        access_token_alg=m["access_token_signed_response_alg"],
        default_audience=m["default_audience"],
        allowed_audiences=tuple(m["allowed_audiences"] or ()),
        backchannel_logout_uri=m["backchannel_logout_uri"],
        backchannel_logout_session_required=bool(m["backchannel_logout_session_required"]),
        disabled=bool(m["disabled"]),
        require_mfa=bool(m["require_mfa"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        secret_rotated_at=m["secret_rotated_at"],
        secret_hash=m["secret_hash"],
    )


def _to_row(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "secret_hash": client.secret_hash,
        "secret_rotated_at": client.secret_rotated_at,
        "public": client.public,
        "first_party": client.first_party,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "redirect_uris": list(client.redirect_uris),
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "grant_types": list(client.grant_types),
        "response_types": list(client.response_types),
        "scope": " ".join(client.scopes),
        "jwks": dict(client.jwks) if client.jwks else None,
        "id_token_signed_response_alg": client.id_token_alg,
        "access_token_signed_response_alg": client.access_token_alg,
        "default_audience": client.default_audience,
        "allowed_audiences": list(client.allowed_audiences),
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "backchannel_logout_session_required": client.backchannel_logout_session_required,
        "disabled": client.disabled,
        "require_mfa": client.require_mfa,
        "created_at": client.created_at,
        "updated_at": client.updated_at,
    }


@storage_boundary
class SqlClientStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @translate_storage_errors
    def get(self, client_id: str) -> Client | None:
        with connect(self._engine) as conn:
            row = conn.execute(select(clients).where(clients.c.client_id == client_id)).first()
        return None if row is None else _to_client(row)

    @translate_storage_errors
    def list(self) -> list[Client]:
        with connect(self._engine) as conn:
            rows = conn.execute(select(clients).order_by(clients.c.client_id))
            return [_to_client(row) for row in rows]

    @translate_storage_errors
    def insert(self, client: Client) -> None:
        try:
            with begin(self._engine) as conn:
                conn.execute(insert(clients).values(**_to_row(client)))
                bump_counter(conn, COUNTER)
        except IntegrityError:
            raise Conflict(f"a client {client.client_id!r} already exists") from None

    @translate_storage_errors
    def update(self, client: Client) -> None:
        values = _to_row(client)
        values.pop("client_id")
        values.pop("created_at")
        with begin(self._engine) as conn:
            conn.execute(
                update(clients).where(clients.c.client_id == client.client_id).values(**values)
            )
            bump_counter(conn, COUNTER)

    @translate_storage_errors
    def delete(self, client_id: str) -> bool:
        with begin(self._engine) as conn:
            found = conn.execute(delete(clients).where(clients.c.client_id == client_id)).rowcount
            bump_counter(conn, COUNTER)
        return bool(found)

    @translate_storage_errors
    def version(self) -> int:
        with connect(self._engine) as conn:
            return read_counter(conn, COUNTER)
