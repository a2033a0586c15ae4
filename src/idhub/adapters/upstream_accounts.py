"""Finding the idhub user an upstream identity belongs to, among the users a directory source
synced (`UpstreamAccounts` of core/upstream.py). Never creates one: a person idhub does not
know is refused.

- DingTalk: the synced user of that source whose `attributes.unionid` is the identity's
  subject (`contact/users/me` answers the unionId, which the contacts sync stores);
- WeCom: the synced user of that source whose `external_id` is the userid.

Two users carrying one key is a conflict an admin must resolve, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import users
from idhub.adapters.identity_store import _to_user, _user_query
from idhub.adapters.unit_of_work import connect
from idhub.core.identity import User
from idhub.core.upstream import UpstreamFailed, UpstreamIdentity


@dataclass(frozen=True)
class SourceKey:
    """Where a provider's subject is found: the source's users, by `external_id` (attribute
    None) or by one key of their `attributes`."""

    source: str
    attribute: str | None = None


@storage_boundary
class SqlSourceAccounts:
    def __init__(self, engine: Engine, key: SourceKey) -> None:
        self._engine = engine
        self._key = key

    def find(self, identity: UpstreamIdentity) -> User | None:
        if not identity.subject:
            return None
        query = _user_query().where(users.c.source == self._key.source)
        if self._key.attribute is None:
            query = query.where(users.c.external_id == identity.subject)
        else:
            query = query.where(
                users.c.attributes[self._key.attribute].as_string() == identity.subject
            )
        with connect(self._engine) as conn:
            rows = conn.execute(query.limit(2)).all()
        if len(rows) > 1:
            raise UpstreamFailed(
                f"two users of {self._key.source} carry this {self._key.attribute or 'id'}",
                code="ambiguous_user",
            )
        return _to_user(rows[0]) if rows else None
