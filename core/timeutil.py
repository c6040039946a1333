"""Time helpers: every timestamp in Quantum Trader is UTC."""

from __future__ import annotations

import time

import pandas as pd

from core.errors import BadConfigError


def parse_utc(value: str | None, field: str) -> pd.Timestamp | None:
    """Parse a user-given date/time (``2024-01-01``, ISO 8601, or epoch ms) as UTC.

    Raises:
        BadConfigError: naming ``field`` when the value cannot be parsed.
    """
    if value is None or value == "":
        return None
    try:
        if value.isdigit():
            return pd.Timestamp(int(value), unit="ms", tz="UTC")
        stamp = pd.Timestamp(value)
    except (ValueError, OverflowError) as err:
        raise BadConfigError(f"{field}: cannot parse {value!r} as a date/time") from err
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def parse_range(
    start: str | None, end: str | None, fields: tuple[str, str] = ("--start", "--end")
) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """Parse a ``start``/``end`` pair; an empty range is an error, not a run that does nothing.

    Raises:
        BadConfigError: a value does not parse, or ``start`` lies after ``end``.
    """
    lo, hi = parse_utc(start, fields[0]), parse_utc(end, fields[1])
    if lo is not None and hi is not None and lo > hi:
        raise BadConfigError(f"{fields[0]} {start} is after {fields[1]} {end}: the range holds no candle")
    return lo, hi


def to_ms(stamp: pd.Timestamp) -> int:
    """Epoch milliseconds of a timestamp."""
    return int(stamp.value // 1_000_000)


def to_iso(stamp: pd.Timestamp | None) -> str | None:
    """ISO-8601 UTC string (``2024-01-01T00:00:00Z``) of a timestamp; None stays None."""
    return None if stamp is None else pd.Timestamp(stamp).strftime("%Y-%m-%dT%H:%M:%SZ")


def ms_to_iso(ms: int | None) -> str | None:
    """:func:`to_iso` of epoch milliseconds."""
    return None if ms is None else to_iso(pd.Timestamp(ms, unit="ms", tz="UTC"))


def now_ms() -> int:
    """Current wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000
