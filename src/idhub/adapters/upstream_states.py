"""The pending upstream sign-ins (core/upstream_flow.py `UpstreamStates`) in the database, so a
browser may come back to any replica and a state is used once on all of them: taking one is a
single DELETE, and only the statement that deleted the row gets it."""

from __future__ import annotations

from sqlalchemy import Engine, delete, insert, select

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import upstream_states
from idhub.adapters.unit_of_work import begin
from idhub.core.upstream_flow import PendingUpstream


@storage_boundary
class SqlUpstreamStates:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(self, key: str, pending: PendingUpstream, *, expires_at: float) -> None:
        with begin(self._engine) as conn:
            # Expired rows go as new ones come: the table holds only the last few minutes.
            conn.execute(
                delete(upstream_states).where(upstream_states.c.expires_at < pending.created_at)
            )
            conn.execute(
                insert(upstream_states).values(
                    key=key,
                    provider=pending.provider,
                    return_to=pending.return_to,
                    created_at=pending.created_at,
                    expires_at=expires_at,
                )
            )

    def take(self, key: str, *, now: float) -> PendingUpstream | None:
        with begin(self._engine) as conn:
            row = conn.execute(
                select(
                    upstream_states.c.provider,
                    upstream_states.c.return_to,
                    upstream_states.c.created_at,
                    upstream_states.c.expires_at,
                ).where(upstream_states.c.key == key)
            ).first()
            if row is None:
                return None
            gone = conn.execute(delete(upstream_states).where(upstream_states.c.key == key))
        # Two callbacks racing for one state both read the row; only one deletes it.
        if gone.rowcount != 1 or row.expires_at < now:
            return None
        return PendingUpstream(
            provider=row.provider, return_to=row.return_to, created_at=row.created_at
        )
