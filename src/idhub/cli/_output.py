"""Tables and JSON for command output."""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO


def _width(text: str) -> int:
    # CJK characters take two columns in a terminal.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [_width(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], _width(value))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v + " " * (widths[i] - _width(v)) for i, v in enumerate(values)).rstrip()

    print(line(list(headers)), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for row in cells:
        print(line(row), file=out)


def is_time_key(key: str) -> bool:
    """Fields holding a moment: storage keeps UTC epoch seconds (docs/architecture.md), an
    admin and a script both read ISO 8601 better than 1764582312.4417."""
    return key.endswith("_at") or key in _TIME_KEYS


_TIME_KEYS = frozenset({"auth_time", "high_water_time"})


def when(epoch: float | None) -> str | None:
    """ISO 8601 UTC to the second (`2026-12-01T11:24:05Z`), None for None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def readable_times(value: Any) -> Any:
    """`value` with every epoch number under a time key (`created_at`, `expires_at`, ...)
    written as ISO 8601, at any depth."""
    if isinstance(value, dict):
        return {
            k: (
                when(v)
                if is_time_key(str(k)) and isinstance(v, int | float) and not isinstance(v, bool)
                else readable_times(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [readable_times(v) for v in value]
    return value


def print_json(value: Any, *, out: TextIO | None = None) -> None:
    print(
        json.dumps(
            readable_times(value), ensure_ascii=False, indent=2, sort_keys=True, default=str
        ),
        file=out or sys.stdout,
    )
