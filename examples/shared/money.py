"""Amounts as integer fen (分): parsed from what a person types, shown with two decimals."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MAX_FEN = 100_000_000_00  # one hundred million yuan: anything above is a typo here


def parse_fen(text: str) -> int:
    """`1280`, `1280.5`, `1,280.50` -> fen; `ValueError` with a sentence otherwise."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        raise ValueError(f"金额无效 not an amount: {text!r}") from None
    if not value.is_finite() or value <= 0 or value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError(f"金额无效 an amount is positive with at most two decimals: {text!r}")
    fen = int(value * 100)
    if fen > MAX_FEN:
        raise ValueError(f"金额过大 amount too large: {text!r}")
    return fen


def yuan(fen: int) -> str:
    return f"{fen // 100:,}.{fen % 100:02d}"
