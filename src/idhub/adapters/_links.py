"""What every store that makes a link does first (sync, SCIM, an admin): the links that so far
meant "the users row's values" record those values, since from now on the row is a blend of
sources and no longer says what any one of them said. An admin-made (local) account gets a
`local` link holding what the admin entered, so that word keeps its rank in precedence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select, update

from idhub.adapters.db import user_links
from idhub.core.identity import LOCAL_SOURCE


def record_row_on_links(
    conn: Any, user_id: int, row: Mapping[str, Any], *, creator: str, now: float
) -> None:
    conn.execute(
        update(user_links)
        .where(user_links.c.user_id == user_id, user_links.c.attrs.is_(None))
        .values(attrs=dict(row))
    )
    if creator != LOCAL_SOURCE:
        return
    found = conn.execute(
        select(user_links.c.id).where(
            user_links.c.user_id == user_id, user_links.c.source == LOCAL_SOURCE
        )
    ).first()
    if found is None:
        conn.execute(
            insert(user_links).values(
                user_id=user_id,
                source=LOCAL_SOURCE,
                external_id=str(user_id),
                linked_at=now,
                linked_by="created",
                attrs=dict(row),
            )
        )
