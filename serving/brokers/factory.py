"""One way to open the broker a command names: ``--broker paper|binance`` and ``--market``.

The paper broker trades with the venue's own filters (``exchangeInfo``, a public call: no
keys), the configured fees, slippage, leverage and funding, and the journal as its book. The
Binance broker needs ``QT_BINANCE_API_KEY`` / ``QT_BINANCE_API_SECRET``; without them it is
refused before anything is sent.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from core.errors import BadConfigError
from core.settings import Settings
from serving.brokers.base import Broker, SymbolRules
from serving.journal import Journal

BROKERS = ("paper", "binance")
MARKETS = ("spot", "futures")


def check_choice(broker: str, market: str, settings: Settings | None = None) -> None:
    """Refuse an unknown ``--broker`` or ``--market`` (and Binance without keys), naming the option."""
    if broker not in BROKERS:
        raise BadConfigError(f"--broker {broker!r}: known brokers are {', '.join(BROKERS)}")
    if market not in MARKETS:
        raise BadConfigError(f"--market {market!r}: known markets are {', '.join(MARKETS)}")
    if (
        broker == "binance"
        and settings is not None
        and not (settings.binance_api_key and settings.binance_api_secret)
    ):
        raise BadConfigError("--broker binance needs QT_BINANCE_API_KEY and QT_BINANCE_API_SECRET")


def open_broker(settings: Settings, journal: Journal, broker: str, market: str, client: Any = None) -> Broker:
    """The broker named by ``--broker`` for ``--market``, on ``journal``.

    Args:
        settings: keys, endpoints, fees, slippage, leverage, funding, the paper cash.
        journal: the broker's journal (the paper broker's book).
        broker: ``paper`` or ``binance``.
        market: ``spot`` or ``futures``.
        client: a python-binance ``Client`` (default: from the settings' endpoints and keys).

    Raises:
        BadConfigError: unknown broker or market, or Binance without keys.
    """
    check_choice(broker, market)
    if broker == "binance":
        from serving.brokers.binance import BinanceBroker

        if client is None:
            return BinanceBroker.from_settings(settings, journal, market)
        from serving.brokers.binance_spot import BinanceSpotBroker

        if market == "spot":
            return BinanceSpotBroker(client, journal)
        return BinanceBroker(client, journal, leverage=settings.leverage)
    from serving.brokers.paper import PaperBroker

    futures = market == "futures"
    return PaperBroker(
        journal, market, venue_rules(settings, market, client), cash=Decimal(str(settings.paper_cash)),  # type: ignore[arg-type]
        quote=settings.quote_asset, fee_bps=settings.fees_bps(market)[0], slippage_bps=settings.slippage_bps,
        leverage=settings.leverage if futures else 1, funding_bps_8h=settings.funding_rate_8h * 10_000,
    )  # fmt: skip


def venue_rules(settings: Settings, market: str, client: Any = None) -> dict[str, SymbolRules]:
    """Every symbol's filters from the venue's public ``exchangeInfo`` (spot or USD-M futures)."""
    from serving.brokers.binance_api import symbol_rules
    from serving.brokers.binance_venue import FuturesVenue

    if client is None:
        from tasks.ingest.binance import make_client

        client = make_client(settings)
    venue = FuturesVenue(client, 1, lambda _: None)
    info = venue.call(client.futures_exchange_info if market == "futures" else client.get_exchange_info)
    return symbol_rules(info)
