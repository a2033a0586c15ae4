"""The `policy_state` table: which policy version the fleet runs. A replica that reloads (file
change, SIGHUP, `idhub policy reload`) publishes the version it now serves; the others poll the
newest row and reload when it names a version they do not run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters._storage_errors import (
    storage_boundary,
    storage_error_with_detail,
)
from idhub.adapters.db import policy_state
from idhub.adapters.unit_of_work import begin, connect


@dataclass(frozen=True)
class PublishedPolicy:
    version: str
    loaded_at: float
    file_hashes: Mapping[str, str]


@storage_boundary
class SqlPolicyState:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def latest(self) -> PublishedPolicy | None:
        try:
            with connect(self._engine) as conn:
                row = conn.execute(
                    select(
                        policy_state.c.version,
                        policy_state.c.loaded_at,
                        policy_state.c.file_hashes,
                    )
                    .order_by(policy_state.c.id.desc())
                    .limit(1)
                ).first()
        except SQLAlchemyError as exc:
            raise storage_error_with_detail(exc, "cannot read policy state") from exc
        if row is None:
            return None
        return PublishedPolicy(row.version, row.loaded_at, dict(row.file_hashes or {}))

    def publish(self, version: str, file_hashes: Mapping[str, str], *, loaded_at: float) -> bool:
        """Records `version` unless it is already the newest row; True if a row was added."""
        current = self.latest()
        if current is not None and current.version == version:
            return False
        try:
            with begin(self._engine) as conn:
                conn.execute(
                    insert(policy_state).values(
                        version=version,
                        loaded_at=loaded_at,
                        file_hashes=dict(file_hashes),
                        directory_version=0,
                    )
                )
        except SQLAlchemyError as exc:
            raise storage_error_with_detail(exc, "cannot record policy state") from exc
        return True
