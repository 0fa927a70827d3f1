"""Type stub of the compiled reader of the row encoding's candidates (``_rows.pyx``)."""

from typing import Any

def rows(
    data: bytes,
    max_chars: int,
    max_entries: int,
    formats: list[str | None],
    pricings: list[str | None],
    ratings: list[str | None],
    duration_high: float,
    bid_low: float,
    attributes_high: int,
) -> list[list[Any] | None] | None: ...
