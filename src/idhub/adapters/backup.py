"""`idhub backup` / `idhub restore`: the database's content and the policy files in one
archive, with a manifest and SHA-256 checksums.

The archive is a gzipped tar holding `manifest.json`, one JSON-lines file per table
(`db/<table>.jsonl`, rows in primary-key order, binary columns in base64) and the policy
directory (`policies/...`). Rows are written as the database's own values through the
SQLAlchemy tables, so an SQLite archive restores into PostgreSQL and back, and every float
(the audit chain hashes its timestamps) survives exactly.

What it holds: sealed signing keys (encrypted under `IDHUB_SECRET_KEY`), HMACs of client
secrets and refresh tokens, password hashes, the audit trail. What it does not hold: the
secret key itself. Keep that apart from the archives (a vault, a Kubernetes Secret): an archive
alone opens nothing, and restoring needs the same key, which `restore` checks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, LargeBinary, Table, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters._storage_errors import storage_error
from idhub.adapters.db import metadata
from idhub.errors import Conflict, InvalidInput

FORMAT = "idhub-backup/1"
_BATCH = 1000
_MEMBER = re.compile(r"^(manifest\.json|db/[a-z0-9_]+\.jsonl|policies/[^\x00]+)$")


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    tables: dict[str, int]
    policy_files: int
    schema: str | None
    size: int


@dataclass(frozen=True)
class RestoreSummary:
    tables: dict[str, int]
    schema: str | None
    source_dialect: str
    policies_written: Path | None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ writing


def _encode(table: Table, row: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in table.columns:
        value = row[column.name]
        if value is not None and isinstance(column.type, LargeBinary):
            value = base64.b64encode(bytes(value)).decode("ascii")
        out[column.name] = value
    return out


def _decode(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in table.columns:
        if column.name not in row:
            continue
        value = row[column.name]
        if value is not None and isinstance(column.type, LargeBinary):
            value = base64.b64decode(value)
        out[column.name] = value
    return out


def schema_revision(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_backup(
    engine: Engine, *, policy_dir: Path, target: Path, created_at: float, version: str
) -> BackupSummary:
    """Writes the archive to `target` (mode 0600, via a temporary file and a rename). One
    repeatable-read transaction on PostgreSQL, so every table is from the same moment."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".idhub-backup-", dir=target.parent) as work:
        root = Path(work)
        (root / "db").mkdir()
        counts: dict[str, int] = {}
        try:
            with engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    if conn.dialect.name == "sqlite":
                        # pysqlite opens no transaction for reads; an explicit one makes every
                        # table come from one WAL snapshot while writers carry on.
                        conn.exec_driver_sql("BEGIN")
                    revision = schema_revision(conn)
                    for table in metadata.sorted_tables:
                        counts[table.name] = _dump_table(conn, table, root / "db")
                dialect = conn.dialect.name
        except SQLAlchemyError as exc:
            raise storage_error(exc, "backup") from exc
        policies = _copy_policies(policy_dir, root / "policies")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "idhub_version": version,
            "created_at": created_at,
            "schema_revision": revision,
            "source_dialect": dialect,
            "tables": counts,
            "policy_files": len(policies),
            "files": {str(p.relative_to(root).as_posix()): _sha256(p) for p in files},
        }
        (root / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        partial = target.with_name(f".{target.name}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
            archive.add(root / "manifest.json", arcname="manifest.json")
            for path in files:
                archive.add(path, arcname=path.relative_to(root).as_posix())
        os.replace(partial, target)
    return BackupSummary(target, counts, len(policies), revision, target.stat().st_size)


def _dump_table(conn: Connection, table: Table, into: Path) -> int:
    count = 0
    order = list(table.primary_key.columns) or list(table.columns)
    result = conn.execution_options(yield_per=_BATCH).execute(select(table).order_by(*order))
    with open(into / f"{table.name}.jsonl", "w", encoding="utf-8") as out:
        for row in result.mappings():
            out.write(json.dumps(_encode(table, row), ensure_ascii=False) + "\n")
            count += 1
    return count


def _copy_policies(source: Path, into: Path) -> list[Path]:
    if not source.is_dir():
        return []
    copied = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            dest = into / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            copied.append(relative)
    return copied


# ------------------------------------------------------------------ reading and restoring


class Archive:
    """An archive whose every member was checked against the manifest before use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, mode="r:gz")
        except (OSError, tarfile.TarError) as exc:
            raise InvalidInput(f"{path}: not an idhub backup archive ({exc})") from None
        try:
            self.manifest = self._check()
        except BaseException:
            self._tar.close()
            raise

    def close(self) -> None:
        self._tar.close()

    def _check(self) -> dict[str, Any]:
        members = {}
        for member in self._tar.getmembers():
            name = member.name
            if not member.isfile() or not _MEMBER.match(name) or ".." in PurePosixPath(name).parts:
                raise InvalidInput(f"{self.path}: unexpected member {name!r}; not restoring")
            members[name] = member
        if "manifest.json" not in members:
            raise InvalidInput(f"{self.path}: no manifest.json; not an idhub backup archive")
        try:
            manifest = json.loads(self._read("manifest.json"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{self.path}: manifest.json is not JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InvalidInput(f"{self.path}: not an {FORMAT} archive")
        listed: dict[str, str] = manifest.get("files", {})
        extra = sorted(set(members) - set(listed) - {"manifest.json"})
        missing = sorted(set(listed) - set(members))
        if extra or missing:
            raise InvalidInput(
                f"{self.path}: members do not match the manifest "
                f"(missing: {', '.join(missing) or '-'}; unlisted: {', '.join(extra) or '-'})"
            )
        for name, expected in listed.items():
            digest = hashlib.sha256()
            with self._open(name) as handle:
                for chunk in iter(lambda h=handle: h.read(1 << 20), b""):  # type: ignore[misc]
                    digest.update(chunk)
            if digest.hexdigest() != expected:
                raise InvalidInput(f"{self.path}: checksum mismatch in {name}; not restoring")
        return manifest

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[IO[bytes]]:
        handle = self._tar.extractfile(name)
        if handle is None:
            raise InvalidInput(f"{self.path}: {name} is not a file")
        with handle:
            yield handle

    def _read(self, name: str) -> bytes:
        with self._open(name) as handle:
            return handle.read()

    def rows(self, table: str) -> Iterator[dict[str, Any]]:
        name = f"db/{table}.jsonl"
        if name not in self.manifest["files"]:
            return
        with self._open(name) as raw:
            for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), start=1):
                try:
                    yield json.loads(line)
                except ValueError:
                    raise InvalidInput(f"{self.path}: {name}:{number}: not JSON") from None

    def policy_files(self) -> list[str]:
        return sorted(n for n in self.manifest["files"] if n.startswith("policies/"))

    def extract_policies(self, into: Path) -> int:
        names = self.policy_files()
        for name in names:
            dest = into / PurePosixPath(name).relative_to("policies")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self._read(name))
        return len(names)

    def policy_bytes(self, name: str) -> bytes:
        return self._read(name)


def _nonempty_tables(conn: Connection) -> list[str]:
    found = []
    for table in metadata.sorted_tables:
        if conn.execute(select(func.count()).select_from(table)).scalar_one():
            found.append(table.name)
    return found


def restore_backup(
    engine: Engine, archive: Archive, *, unseal: Callable[[bytes, bytes], object]
) -> RestoreSummary:
    """Loads the archive's rows into an empty database at the same schema revision, in one
    transaction: all or nothing. Refuses a database that holds anything, and an archive whose
    sealed keys this server's secret key cannot open (`unseal` raises), before writing."""
    manifest = archive.manifest
    for row in archive.rows("signing_keys"):
        unseal(base64.b64decode(row["private_enc"]), str(row["kid"]).encode())
    known = {table.name for table in metadata.sorted_tables}
    unknown = sorted(set(manifest.get("tables", {})) - known)
    if unknown:
        raise InvalidInput(
            f"{archive.path}: tables this idhub does not know: {', '.join(unknown)} "
            "(restore with the idhub version that made the archive)"
        )
    counts: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            revision = schema_revision(conn)
            if revision != manifest.get("schema_revision"):
                raise Conflict(
                    f"the archive is of schema {manifest.get('schema_revision')}, this database "
                    f"is at {revision}",
                    hint="restore with the idhub version that made the archive "
                    "(`idhub migrate` on an empty database first), then upgrade",
                )
            filled = _nonempty_tables(conn)
            if filled:
                raise Conflict(
                    f"the database is not empty ({', '.join(filled[:5])}"
                    f"{', ...' if len(filled) > 5 else ''} hold rows); restore only into a new, "
                    "migrated database",
                    hint="create an empty database, run `idhub migrate` against it, and restore",
                )
            for table in metadata.sorted_tables:
                counts[table.name] = _load_table(conn, table, archive)
            if conn.dialect.name == "postgresql":
                _advance_sequences(conn)
    except SQLAlchemyError as exc:
        raise storage_error(exc, "restore") from exc
    return RestoreSummary(
        counts, revision, str(manifest.get("source_dialect")), policies_written=None
    )


def _load_table(conn: Connection, table: Table, archive: Archive) -> int:
    count = 0
    batch: list[dict[str, Any]] = []
    for row in archive.rows(table.name):
        batch.append(_decode(table, row))
        if len(batch) >= _BATCH:
            conn.execute(insert(table), batch)
            count += len(batch)
            batch = []
    if batch:
        conn.execute(insert(table), batch)
        count += len(batch)
    expected = archive.manifest.get("tables", {}).get(table.name, 0)
    if count != expected:
        raise InvalidInput(
            f"{archive.path}: {table.name} holds {count} rows, manifest says {expected}"
        )
    return count


def _advance_sequences(conn: Connection) -> None:
    """Rows came with their ids: move each serial column's sequence past the largest one."""
    for table in metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True or (
                column.autoincrement == "auto" and len(table.primary_key.columns) == 1
            ):
                try:
                    if column.type.python_type is not int:
                        continue
                except NotImplementedError:
                    continue
                # Names come from idhub's own table definitions, never from the archive.
                top = select(func.max(column)).scalar_subquery()
                conn.execute(
                    select(
                        func.setval(
                            func.pg_get_serial_sequence(table.name, column.name),
                            func.coalesce(top, 1),
                            top.is_not(None),
                        )
                    )
                )


def restore_policies(archive: Archive, into: Path) -> str:
    """Writes the archive's policy files into `into` when it is missing or empty; an existing
    policy directory is never overwritten (it is usually a git checkout or a mounted volume)."""
    names = archive.policy_files()
    if not names:
        return "the archive holds no policy files"
    if not into.exists() or not any(into.iterdir()):
        count = archive.extract_policies(into)
        return f"wrote {count} policy file(s) to {into}"
    differ = [
        name
        for name in names
        if not (into / PurePosixPath(name).relative_to("policies")).is_file()
        or (into / PurePosixPath(name).relative_to("policies")).read_bytes()
        != archive.policy_bytes(name)
    ]
    if not differ:
        return f"the policy files in {into} match the archive"
    return (
        f"warning: {len(differ)} policy file(s) in {into} differ from the archive "
        f"(first: {differ[0]}); left as they are, use --policies DIR to write the archive's"
    )
