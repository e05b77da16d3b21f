"""Small formatting helpers for incident reports: people read tables."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def cell(value: Any) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def usd(value: Decimal | float | None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{float(value):+,.2f}" if sign else f"{float(value):,.2f}"
