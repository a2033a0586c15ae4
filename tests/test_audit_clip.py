"""adapters/audit_store.py `_clip`: a column's value as stored, whichever way it is answered
(kept as it is, its NULs shown, clipped to the column)."""

from __future__ import annotations

import pytest

from idhub.adapters.audit_store import _clip
from idhub.core.audit import NUL_SHOWN_AS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", ""),
        ("x" * 64, "x" * 64),
        ("x" * 65, "x" * 63 + "…"),
        ("a\x00b", f"a{NUL_SHOWN_AS}b"),
        ("\x00" * 64, NUL_SHOWN_AS * 64),
        ("\x00" * 65, NUL_SHOWN_AS * 63 + "…"),
        ("é" * 64, "é" * 64),
    ],
)
def test_a_value_is_kept_shown_or_clipped(value: str | None, expected: str | None) -> None:
    assert _clip(value, 64) == expected
