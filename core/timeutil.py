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
