"""Column types that keep money exact and times in UTC on every database.

SQLite has no decimal type: a ``NUMERIC`` column converts ``0.000000012345678901`` to a
float and SQLAlchemy's ``Numeric`` binds through float as well, so on SQLite an
:class:`ExactDecimal` is stored as its canonical decimal string; elsewhere (Postgres) it
is a native ``NUMERIC(38, 18)``, read back without the zeros it pads to 18 decimals. Either
way Python sees the same :class:`~decimal.Decimal` in and out, and a value the column cannot
hold exactly is refused instead of rounded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine

#: Digits after the point and in all, as in ``NUMERIC(38, 18)``: satoshis to billions.
SCALE = 18
PRECISION = 38


class ExactDecimal(TypeDecorator[Decimal]):
    """A :class:`~decimal.Decimal` stored without loss (never through float)."""

    impl = Numeric(PRECISION, SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """A string on SQLite (no exact numeric there), ``NUMERIC(38, 18)`` elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(PRECISION + 2))
        return dialect.type_descriptor(Numeric(PRECISION, SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Check the value fits exactly; the string form on SQLite."""
        if value is None:
            return None
        exact = to_exact(value)
        return format(exact, "f") if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        """A :class:`~decimal.Decimal` whatever the driver returned, without ``NUMERIC``'s padding."""
        if value is None:
            return None
        return unpadded(value) if isinstance(value, Decimal) else Decimal(str(value))


def unpadded(value: Decimal) -> Decimal:
    """``value`` without the trailing zeros ``NUMERIC(38, 18)`` pads every value with.

    Postgres returns ``0.00153`` as ``0.001530000000000000``; arithmetic on such values keeps
    18 decimals per operand (a price times a quantity: 28 significant digits), which
    :func:`to_exact` then refuses to store. Read back unpadded, values behave as on SQLite:
    ``65000.120000000000000000`` → ``65000.12``, ``1000.000000000000000000`` → ``1000`` (not ``1E+3``).
    """
    text = format(value, "f")  # exact: normalize() and quantize() round to the context's 28 digits
    return Decimal(text.rstrip("0").rstrip(".")) if "." in text else value


def to_exact(value: object) -> Decimal:
    """``value`` as a Decimal the column holds exactly.

    Raises:
        TypeError: a float (already inexact) or anything but Decimal / int.
        ValueError: NaN, infinity, more than 18 decimals or 20 integer digits.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(
            f"money and quantities must be Decimal (or int), not {type(value).__name__}: {value!r}"
        )
    exact = Decimal(value)
    if not exact.is_finite():
        raise ValueError(f"{value}: not a finite number")
    _sign, digits, exponent = exact.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    decimals = max(0, -exponent)
    integer_digits = max(0, len(digits) + exponent)
    if decimals > SCALE or integer_digits > PRECISION - SCALE:
        raise ValueError(
            f"{value}: does not fit NUMERIC({PRECISION}, {SCALE}) exactly "
            f"({integer_digits} integer digits, {decimals} decimals); round it first"
        )
    return exact


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored as naive UTC (SQLite keeps no zone)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes (whose zone is a guess); store them in UTC."""
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{value!r}: journal times must be timezone-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """The stored time, marked UTC."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)
