"""A small local Binance REST exchange on 127.0.0.1, serving real candles and taking orders.

Market data: the public endpoints the python-binance ``Client`` uses, with Binance's
pagination semantics, a settable clock (a candle is served once it has opened, so the newest
one may still be forming), request-weight headers, and fault injection: 429/418 with
``Retry-After``, 500, slow responses (timeouts), malformed rows and unreadable bodies.

Trading (spot and USD-M futures, one-way mode, USDT quoted): signed endpoints checked like
Binance (``X-MBX-APIKEY``, HMAC-SHA256 ``signature``, ``timestamp``/``recvWindow``), symbol
filters in ``exchangeInfo``, balances, positions, and a matching engine that walks the
candles as the clock advances. Order faults: rejects, a timeout or 503 after the order was
accepted, an open order that silently vanishes, a clock skew (-1021). Tests point the real
client at it (:meth:`FakeExchange.client`); later, ``qt live --replay`` does.

Matching rules: a MARKET order fills at once at the current price (:meth:`set_price`, else
the open of the candle forming at the clock). Resting orders (stops, take-profits, limits)
meet each candle once it has closed, starting with the candle that opens at or after the
order was placed (no look-ahead into the candle it was placed in). Within one candle, stops
are matched before take-profits and limits (conservative), so when one candle touches both
legs of a position the stop fills and the other leg, having nothing left to reduce, expires.
A trigger fills at its trigger price, or at the open when the candle gapped through it.

Signed-request clock: the market clock is historical in replay, so a ``timestamp`` is valid
when it is within ``recvWindow`` of either the wall clock (plus :attr:`clock_skew_ms`) or
the market clock (``/time``'s ``serverTime``): a client that never syncs and one that synced
its offset from ``/time`` are both accepted.
"""

from __future__ import annotations

from infra.exchange.model import (
    ERROR_MESSAGES,
    FAULT_KINDS,
    ZERO,
    Fault,
    Fill,
    Order,
    Position,
    SymbolFilters,
)
from infra.exchange.server import FakeExchange

__all__ = [
    "ERROR_MESSAGES",
    "FAULT_KINDS",
    "ZERO",
    "FakeExchange",
    "Fault",
    "Fill",
    "Order",
    "Position",
    "SymbolFilters",
]
