"""SSO sessions, the systems each session signed into, remembered consents and back-channel
logout deliveries, in the database (SQLite or PostgreSQL), so every replica sees the same."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Row, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from idhub.adapters._storage_errors import storage_boundary
from idhub.adapters.db import consents, logout_deliveries, session_clients, sso_sessions
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.logout import Delivery
from idhub.core.sessions import Participant, SsoSession


def _to_session(row: Row[Any], participants: Sequence[Participant] = ()) -> SsoSession:
    m = row._mapping
    return SsoSession(
        sid=m["sid"],
        user_id=m["user_id"],
        auth_time=m["auth_time"],
        amr=tuple(m["amr"] or ()),
        acr=m["acr"],
        created_at=m["created_at"],
        last_seen_at=m["last_seen_at"],
        expires_at=m["expires_at"],
        ended_at=m["ended_at"],
        end_reason=m["end_reason"],
        ip=m["ip"],
        user_agent=m["user_agent"],
        participants=tuple(participants),
    )


@storage_boundary
class SqlSessionStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ------------------------------------------------------------------ sessions

    def count_active(self, now: float) -> int:
        """Sessions neither ended nor expired, for the `idhub_sessions_active` metric."""
        query = (
            select(func.count())
            .select_from(sso_sessions)
            .where(sso_sessions.c.ended_at.is_(None), sso_sessions.c.expires_at > now)
        )
        with connect(self._engine) as conn:
            return int(conn.execute(query).scalar_one())

    def insert(self, *, id_hash: str, session: SsoSession) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                insert(sso_sessions).values(
                    id_hash=id_hash,
                    sid=session.sid,
                    user_id=session.user_id,
                    auth_time=session.auth_time,
                    amr=list(session.amr),
                    acr=session.acr,
                    created_at=session.created_at,
                    last_seen_at=session.last_seen_at,
                    expires_at=session.expires_at,
                    ip=session.ip,
                    user_agent=session.user_agent,
                )
            )

    def rekey(
        self,
        sid: str,
        *,
        new_id_hash: str,
        auth_time: float,
        amr: Sequence[str],
        acr: str | None,
        expires_at: float,
        now: float,
    ) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(sso_sessions)
                .where(sso_sessions.c.sid == sid)
                .values(
                    id_hash=new_id_hash,
                    auth_time=auth_time,
                    amr=list(amr),
                    acr=acr,
                    expires_at=expires_at,
                    last_seen_at=now,
                )
            )

    def by_id_hash(self, id_hash: str) -> SsoSession | None:
        return self._one(sso_sessions.c.id_hash == id_hash)

    def by_sid(self, sid: str) -> SsoSession | None:
        return self._one(sso_sessions.c.sid == sid)

    def active_for_user(self, user_id: int, now: float) -> list[SsoSession]:
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(sso_sessions)
                .where(
                    sso_sessions.c.user_id == user_id,
                    sso_sessions.c.ended_at.is_(None),
                    sso_sessions.c.expires_at > now,
                )
                .order_by(sso_sessions.c.created_at)
            ).all()
            return [_to_session(row, self._participants(conn, row._mapping["sid"])) for row in rows]

    def touch(self, sid: str, now: float) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(sso_sessions).where(sso_sessions.c.sid == sid).values(last_seen_at=now)
            )

    def end(self, sid: str, *, reason: str, now: float) -> bool:
        """Ends the session once: of two concurrent logouts only one sees True."""
        with begin(self._engine) as conn:
            changed = conn.execute(
                update(sso_sessions)
                .where(sso_sessions.c.sid == sid, sso_sessions.c.ended_at.is_(None))
                .values(ended_at=now, end_reason=reason[:100])
            ).rowcount
        return bool(changed)

    def add_client(self, sid: str, client_id: str, now: float, *, protocol: str = "oidc") -> None:
        try:
            with begin(self._engine, savepoint=True) as conn:
                exists = conn.execute(
                    select(session_clients.c.sid).where(
                        session_clients.c.sid == sid, session_clients.c.client_id == client_id
                    )
                ).first()
                if exists is None:
                    conn.execute(
                        insert(session_clients).values(
                            sid=sid, client_id=client_id, first_at=now, protocol=protocol
                        )
                    )
        except IntegrityError:
            pass  # a parallel request recorded the same pair first

    def clients(self, sid: str) -> list[str]:
        with connect(self._engine) as conn:
            return [p.client_id for p in self._participants(conn, sid)]

    def purge_ended(self, before: float) -> int:
        """Deletes sessions that ended or expired before `before` (housekeeping)."""
        with begin(self._engine) as conn:
            old = select(sso_sessions.c.sid).where(
                or_(sso_sessions.c.ended_at < before, sso_sessions.c.expires_at < before)
            )
            conn.execute(delete(session_clients).where(session_clients.c.sid.in_(old)))
            return int(
                conn.execute(
                    delete(sso_sessions).where(
                        or_(sso_sessions.c.ended_at < before, sso_sessions.c.expires_at < before)
                    )
                ).rowcount
            )

    @staticmethod
    def _participants(conn: Any, sid: str) -> list[Participant]:
        rows = conn.execute(
            select(session_clients.c.client_id, session_clients.c.protocol)
            .where(session_clients.c.sid == sid)
            .order_by(session_clients.c.first_at, session_clients.c.client_id)
        )
        return [Participant(str(r[0]), str(r[1])) for r in rows]

    def _one(self, condition: Any) -> SsoSession | None:
        with connect(self._engine) as conn:
            row = conn.execute(select(sso_sessions).where(condition)).first()
            if row is None:
                return None
            return _to_session(row, self._participants(conn, row._mapping["sid"]))

    # ------------------------------------------------------------------ consents

    def granted_scopes(self, user_id: int, client_id: str) -> set[str]:
        with connect(self._engine) as conn:
            value = conn.execute(
                select(consents.c.scope).where(
                    consents.c.user_id == user_id, consents.c.client_id == client_id
                )
            ).scalar()
        return set(str(value).split()) if value else set()

    def grant(self, user_id: int, client_id: str, scopes: Sequence[str], now: float) -> None:
        """Remembers the union of what was granted before and `scopes`."""
        with begin(self._engine) as conn:
            current = conn.execute(
                select(consents.c.scope).where(
                    consents.c.user_id == user_id, consents.c.client_id == client_id
                )
            ).scalar()
            merged = " ".join(sorted(set(str(current or "").split()) | set(scopes)))
            if current is None:
                conn.execute(
                    insert(consents).values(
                        user_id=user_id, client_id=client_id, scope=merged, granted_at=now
                    )
                )
            else:
                conn.execute(
                    update(consents)
                    .where(consents.c.user_id == user_id, consents.c.client_id == client_id)
                    .values(scope=merged, granted_at=now)
                )

    def revoke_consents(self, user_id: int) -> int:
        with begin(self._engine) as conn:
            return int(conn.execute(delete(consents).where(consents.c.user_id == user_id)).rowcount)


def _to_delivery(row: Row[Any]) -> Delivery:
    m = row._mapping
    return Delivery(
        id=m["id"],
        client_id=m["client_id"],
        sid=m["sid"],
        user_sub=m["user_sub"],
        uri=m["uri"],
        status=m["status"],
        attempts=m["attempts"] or 0,
        last_error=m["last_error"],
        next_attempt_at=m["next_attempt_at"],
        created_at=m["created_at"],
        delivered_at=m["delivered_at"],
        protocol=m["protocol"] or "oidc",
        ref=m["ref"],
    )


@storage_boundary
class SqlDeliveryStore:
    """Rows of `logout_deliveries`: pending -> delivered, or -> failed after the last retry."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def queue(
        self,
        *,
        client_id: str,
        sid: str | None,
        user_sub: str,
        uri: str,
        now: float,
        protocol: str = "oidc",
        ref: str | None = None,
    ) -> int:
        with begin(self._engine) as conn:
            result = conn.execute(
                insert(logout_deliveries).values(
                    protocol=protocol,
                    ref=ref,
                    client_id=client_id,
                    sid=sid,
                    user_sub=user_sub,
                    uri=uri,
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def due(self, now: float, *, limit: int = 50) -> list[Delivery]:
        with connect(self._engine) as conn:
            rows = conn.execute(
                select(logout_deliveries)
                .where(
                    logout_deliveries.c.status == "pending",
                    logout_deliveries.c.next_attempt_at <= now,
                )
                .order_by(logout_deliveries.c.next_attempt_at, logout_deliveries.c.id)
                .limit(limit)
            ).all()
        return [_to_delivery(r) for r in rows]

    def claim(self, delivery: Delivery, *, until: float) -> bool:
        """Takes a due row for one attempt: only one replica or thread wins the update."""
        with begin(self._engine) as conn:
            won = conn.execute(
                update(logout_deliveries)
                .where(
                    logout_deliveries.c.id == delivery.id,
                    logout_deliveries.c.status == "pending",
                    logout_deliveries.c.attempts == delivery.attempts,
                    logout_deliveries.c.next_attempt_at == delivery.next_attempt_at,
                )
                .values(next_attempt_at=until)
            ).rowcount
        return bool(won)

    def mark_delivered(self, delivery_id: int, *, attempts: int, now: float) -> None:
        self._update(
            delivery_id,
            status="delivered",
            attempts=attempts,
            delivered_at=now,
            last_error=None,
            next_attempt_at=None,
        )

    def mark_retry(self, delivery_id: int, *, attempts: int, error: str, next_at: float) -> None:
        self._update(
            delivery_id, attempts=attempts, last_error=error[:500], next_attempt_at=next_at
        )

    def mark_failed(self, delivery_id: int, *, attempts: int, error: str) -> None:
        self._update(
            delivery_id,
            status="failed",
            attempts=attempts,
            last_error=error[:500],
            next_attempt_at=None,
        )

    def get(self, delivery_id: int) -> Delivery | None:
        with connect(self._engine) as conn:
            row = conn.execute(
                select(logout_deliveries).where(logout_deliveries.c.id == delivery_id)
            ).first()
        return None if row is None else _to_delivery(row)

    def list(
        self, *, status: str | None = None, sid: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        query = select(logout_deliveries).order_by(logout_deliveries.c.id.desc()).limit(limit)
        conditions = []
        if status is not None:
            conditions.append(logout_deliveries.c.status == status)
        if sid is not None:
            conditions.append(logout_deliveries.c.sid == sid)
        if conditions:
            query = query.where(and_(*conditions))
        with connect(self._engine) as conn:
            return [_to_delivery(r) for r in conn.execute(query)]

    def purge(self, *, delivered_before: float, failed_before: float) -> int:
        """Deletes delivered rows older than one cut-off and failed rows older than another
        (failed ones are kept longer: an admin may still be looking into them)."""
        with begin(self._engine) as conn:
            return int(
                conn.execute(
                    delete(logout_deliveries).where(
                        or_(
                            and_(
                                logout_deliveries.c.status == "delivered",
                                logout_deliveries.c.created_at < delivered_before,
                            ),
                            and_(
                                logout_deliveries.c.status == "failed",
                                logout_deliveries.c.created_at < failed_before,
                            ),
                        )
                    )
                ).rowcount
            )

    def _update(self, delivery_id: int, **values: Any) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(logout_deliveries)
                .where(logout_deliveries.c.id == delivery_id)
                .values(**values)
            )
