"""Alembic environment: idhub passes its engine in `config.attributes`."""

from __future__ import annotations

from alembic import context

from idhub.adapters.db import metadata

engine = context.config.attributes.get("engine")
if engine is None:  # pragma: no cover - only when someone runs the alembic CLI by hand
    raise RuntimeError("run migrations through `idhub init` / `idhub migrate`")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
