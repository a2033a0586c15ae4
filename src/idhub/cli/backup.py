"""`idhub backup FILE` and `idhub restore FILE` (docs/operations.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from idhub.cli._context import CliContext


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backup", help="write the database's content and the policy files to one archive"
    )
    p.add_argument("file", type=Path, help="archive to write (.tar.gz; replaced if it exists)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="load an archive from `idhub backup` into an empty database")
    p.add_argument("file", type=Path, help="archive written by `idhub backup`")
    p.add_argument(
        "--policies",
        type=Path,
        help="where to write the archive's policy files (default [policy] dir, if empty)",
    )
    p.set_defaults(func=cmd_restore)


def cmd_backup(args: argparse.Namespace, ctx: CliContext) -> int:
    summary = ctx.services.backup(args.file)
    rows = sum(summary.tables.values())
    print(
        f"wrote {summary.path} ({summary.size} bytes): {rows} row(s) in "
        f"{len(summary.tables)} table(s), {summary.policy_files} policy file(s), "
        f"schema {summary.schema}"
    )
    print("the secret key is not in the archive: keep IDHUB_SECRET_KEY to restore it")
    return 0


def cmd_restore(args: argparse.Namespace, ctx: CliContext) -> int:
    summary = ctx.services.restore(args.file, policies=args.policies)
    rows = sum(summary.tables.values())
    print(
        f"restored {rows} row(s) in {len(summary.tables)} table(s) from a "
        f"{summary.source_dialect} backup, schema {summary.schema}"
    )
    for note in summary.notes:
        print(note)
    return 0 if summary.notes and summary.notes[-1].startswith("audit chain verifies") else 1
