"""The sync ledger: per-source lease, run records and high-water state.

The lease is a row in `sync_state` taken with a conditional UPDATE, so two replicas racing
for one source cannot both win. It is renewed as a run proceeds and released at the end; a
holder that died on this host (kill -9) is recognised by its pid and replaced at once, one on
another host when its lease expires.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from idhub.adapters._storage_errors import (
    storage_boundary,
    storage_error_with_detail,
)
from idhub.adapters.db import sync_runs, sync_state
from idhub.adapters.unit_of_work import begin, connect
from idhub.core.clock import Clock
from idhub.core.directory.ports import SyncState


def lease_owner() -> str:
    """host:pid:random, so a holder that died on this host can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def _holder_is_dead(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@storage_boundary
class SqlSyncLedger:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def acquire_lease(self, source: str, owner: str, *, ttl: float) -> str | None:
        now = self._clock.now()
        try:
            with begin(self._engine) as conn:
                row = conn.execute(
                    select(sync_state.c.lock_owner, sync_state.c.lock_expires_at).where(
                        sync_state.c.source == source
                    )
                ).first()
                if row is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                insert(sync_state).values(
                                    source=source, lock_owner=owner, lock_expires_at=now + ttl
                                )
                            )
                        return ""
                    except IntegrityError:
                        row = conn.execute(
                            select(sync_state.c.lock_owner, sync_state.c.lock_expires_at).where(
                                sync_state.c.source == source
                            )
                        ).first()
                        assert row is not None
                holder, expires = row
                free = (
                    holder is None
                    or holder == owner
                    or (expires or 0) < now
                    or _holder_is_dead(holder)
                )
                if not free:
                    return None
                # Conditional on the holder we saw: two replicas racing cannot both win.
                condition = (
                    sync_state.c.lock_owner.is_(None)
                    if holder is None
                    else sync_state.c.lock_owner == holder
                )
                taken = conn.execute(
                    update(sync_state)
                    .where(sync_state.c.source == source, condition)
                    .values(lock_owner=owner, lock_expires_at=now + ttl)
                ).rowcount
                if taken != 1:
                    return None
                return holder if holder not in (None, owner) else ""
        except SQLAlchemyError as exc:
            raise storage_error_with_detail(
                exc, f"cannot take the sync lease for {source}"
            ) from exc

    def renew_lease(self, source: str, owner: str, *, ttl: float) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(sync_state)
                .where(sync_state.c.source == source, sync_state.c.lock_owner == owner)
                .values(lock_expires_at=self._clock.now() + ttl)
            )

    def release_lease(self, source: str, owner: str) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                update(sync_state)
                .where(sync_state.c.source == source, sync_state.c.lock_owner == owner)
                .values(lock_owner=None, lock_expires_at=None)
            )

    def start_run(self, run_id: str, source: str, *, mode: str, dry_run: bool) -> None:
        with begin(self._engine) as conn:
            conn.execute(
                insert(sync_runs).values(
                    id=run_id,
                    source=source,
                    mode=mode,
                    dry_run=dry_run,
                    status="running",
                    started_at=self._clock.now(),
                    counts={},
                )
            )

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        counts: Mapping[str, Any],
        error: str | None,
        mode: str | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "status": status,
            "finished_at": self._clock.now(),
            "counts": dict(counts),
            "error": error,
        }
        if mode is not None:
            values["mode"] = mode
        with begin(self._engine) as conn:
            conn.execute(update(sync_runs).where(sync_runs.c.id == run_id).values(**values))

    def fail_stale_runs(self, source: str) -> int:
        with begin(self._engine) as conn:
            return int(
                conn.execute(
                    update(sync_runs)
                    .where(
                        sync_runs.c.source == source,
                        sync_runs.c.status == "running",
                        sync_runs.c.dry_run.is_(False),
                    )
                    .values(
                        status="failed",
                        finished_at=self._clock.now(),
                        error="interrupted (the process running it stopped)",
                    )
                ).rowcount
            )

    def recent_runs(self, source: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
        query = select(sync_runs).order_by(sync_runs.c.started_at.desc()).limit(limit)
        if source is not None:
            query = query.where(sync_runs.c.source == source)
        with connect(self._engine) as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def state(self, source: str) -> SyncState:
        with connect(self._engine) as conn:
            row = conn.execute(select(sync_state).where(sync_state.c.source == source)).first()
            id_check = conn.execute(
                select(func.max(sync_runs.c.started_at)).where(
                    sync_runs.c.source == source,
                    sync_runs.c.status == "succeeded",
                    sync_runs.c.dry_run.is_(False),
                    sync_runs.c.mode.in_(("full", "reconcile")),
                )
            ).scalar()
        if row is None:
            return SyncState(last_id_check_at=id_check)
        return SyncState(
            high_water=row.high_water,
            last_full_at=row.last_full_at,
            last_incremental_at=row.last_incremental_at,
            last_id_check_at=id_check,
        )

    def all_states(self) -> list[dict[str, Any]]:
        with connect(self._engine) as conn:
            return [dict(r._mapping) for r in conn.execute(select(sync_state))]

    def save_state(self, source: str, *, high_water: str | None, full: bool) -> None:
        now = self._clock.now()
        values: dict[str, Any] = {"high_water": high_water}
        values["last_full_at" if full else "last_incremental_at"] = now
        with begin(self._engine) as conn:
            conn.execute(update(sync_state).where(sync_state.c.source == source).values(**values))
