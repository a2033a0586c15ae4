"""Who is signed in to this system, in its own database rather than in the cookie, so that a
back-channel logout from idhub (which names idhub's session `sid`, or the person's `sub`) can
end the local session at once. The cookie only holds the row's random id."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from examples.shared.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS signins (
    id TEXT PRIMARY KEY,
    sub TEXT NOT NULL,
    sid TEXT,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    department TEXT NOT NULL,
    access_claims TEXT NOT NULL,
    access_token TEXT NOT NULL,
    id_token TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS signins_sid ON signins (sid);
CREATE INDEX IF NOT EXISTS signins_sub ON signins (sub);
"""


@dataclass(frozen=True)
class SignedIn:
    """A person signed in here: identity from the ID token, roles from the access token."""

    id: str
    sub: str
    sid: str | None
    username: str
    name: str
    department: str
    # The validated access-token claims (aud = this system): what decisions are asked about.
    claims: dict[str, Any]
    access_token: str
    id_token: str
    csrf: str

    @property
    def roles(self) -> list[str]:
        return [str(r) for r in self.claims.get("roles", [])]


class LocalSessions:
    def __init__(self, db: Database) -> None:
        self._db = db

    def start(
        self, *, id_claims: dict[str, Any], access_claims: dict[str, Any], token: dict[str, Any]
    ) -> str:
        row_id = secrets.token_urlsafe(24)
        with self._db.connect() as conn:
            conn.execute(
                "INSERT INTO signins VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row_id,
                    id_claims["sub"],
                    id_claims.get("sid"),
                    id_claims.get("preferred_username", id_claims["sub"]),
                    id_claims.get("name", ""),
                    id_claims.get("department", ""),
                    json.dumps(access_claims),
                    token["access_token"],
                    token["id_token"],
                    secrets.token_urlsafe(24),
                    float(access_claims["exp"]),
                ),
            )
        return row_id

    def get(self, row_id: str, *, now: float | None = None) -> SignedIn | None:
        """The live session, or None: ended, unknown, or its access token expired (the person
        then signs in again, silently while idhub's session lasts)."""
        with self._db.connect() as conn:
            row = conn.execute("SELECT * FROM signins WHERE id = ?", (row_id,)).fetchone()
        if row is None or row["expires_at"] <= (now or time.time()):
            return None
        return SignedIn(
            id=row["id"],
            sub=row["sub"],
            sid=row["sid"],
            username=row["username"],
            name=row["name"],
            department=row["department"],
            claims=json.loads(row["access_claims"]),
            access_token=row["access_token"],
            id_token=row["id_token"],
            csrf=row["csrf"],
        )

    def end(self, row_id: str) -> None:
        with self._db.connect() as conn:
            conn.execute("DELETE FROM signins WHERE id = ?", (row_id,))

    def end_for(self, *, sid: str | None, sub: str | None) -> int:
        """Ends what a logout token names: the idhub session `sid`, else every session of `sub`."""
        with self._db.connect() as conn:
            if sid:
                cursor = conn.execute("DELETE FROM signins WHERE sid = ?", (sid,))
            else:
                cursor = conn.execute("DELETE FROM signins WHERE sub = ?", (sub or "",))
            return cursor.rowcount
