"""The public market-data endpoints: ping, time, exchangeInfo, klines, 24h tickers and the last price."""

from __future__ import annotations

from typing import Any

import numpy as np

from infra.exchange.base import _ExchangeBase
from infra.exchange.model import (
    _FUTURES_ALGO_TYPES,
    _MAX_LIMIT,
    _SPOT_TYPES,
    _ApiError,
    _assets,
    _decimals,
    _s,
    _Series,
)


class _MarketData(_ExchangeBase):
    """Answers the unsigned market-data requests from the served candles."""

    # ----- market data ----------------------------------------------------------------------
    def _market_data(self, market: str, endpoint: str, params: dict[str, str], now: int) -> tuple[int, Any]:
        if endpoint == "ping":
            return 200, {}
        if endpoint == "time":
            return 200, {"serverTime": now}
        if endpoint == "exchangeInfo":
            return 200, self._exchange_info(market, now)
        if endpoint == "klines":
            return 200, self._klines(market, params, now)
        if endpoint == "ticker/price" and "symbol" not in params:  # every symbol's, as Binance answers
            return 200, [
                {"symbol": sym, "price": _s(self.price(sym, market))}
                for (m, sym), series in sorted(self._match_series().items())
                if m == market and series.open_time[0] <= now  # listed once its first candle has opened
            ]
        if endpoint == "ticker/price":  # the last price: the open of the candle forming now
            return 200, {
                "symbol": self._symbol(market, params),
                "price": _s(self.price(params["symbol"], market)),
            }
        tickers = [
            self._ticker(sym, s, now)
            for (m, sym, ival), s in self._series.items()
            if m == market and ival == "1h"
        ]
        if "symbol" in params:
            match = [t for t in tickers if t["symbol"] == params["symbol"]]
            if not match:
                raise _ApiError(-1121, "Invalid symbol.")
            return 200, match[0]
        return 200, tickers

    def _exchange_info(self, market: str, now: int) -> dict[str, Any]:
        symbols = sorted({sym for (m, sym, _) in self._series if m == market})
        return {
            "timezone": "UTC",
            "serverTime": now,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
            ],
            "symbols": [self._symbol_info(market, s) for s in symbols],
        }

    def _symbol_info(self, market: str, symbol: str) -> dict[str, Any]:
        base, quote = _assets(symbol)
        f = self._filters[(market, symbol)]
        price_filter = {
            "filterType": "PRICE_FILTER",
            "minPrice": _s(f.tick_size),
            "maxPrice": "1000000",
            "tickSize": _s(f.tick_size),
        }
        lot = {"minQty": _s(f.min_qty), "maxQty": "9000", "stepSize": _s(f.step_size)}
        info: dict[str, Any] = {"symbol": symbol, "status": "TRADING", "baseAsset": base, "quoteAsset": quote}
        if market == "spot":
            notional = {"filterType": "NOTIONAL", "minNotional": _s(f.min_notional), "applyMinToMarket": True}
            notional |= {"maxNotional": "9000000", "applyMaxToMarket": False, "avgPriceMins": 5}
            info |= {"baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8}
            info |= {"orderTypes": sorted(_SPOT_TYPES), "ocoAllowed": True, "isSpotTradingAllowed": True}
            filters = [price_filter, {"filterType": "LOT_SIZE", **lot}, notional]
        else:
            info |= {"pair": symbol, "contractType": "PERPETUAL", "marginAsset": quote}
            info |= {"pricePrecision": _decimals(f.tick_size), "quantityPrecision": _decimals(f.step_size)}
            info |= {"orderTypes": ["LIMIT", "MARKET", *sorted(_FUTURES_ALGO_TYPES)], "timeInForce": ["GTC"]}
            notional = {"filterType": "MIN_NOTIONAL", "notional": _s(f.min_notional)}
            filters = [
                price_filter,
                {"filterType": "LOT_SIZE", **lot},
                {"filterType": "MARKET_LOT_SIZE", **lot},
            ]
            filters.append(notional)
        return info | {"filters": filters}

    def _klines(self, market: str, params: dict[str, str], now: int) -> list[list[Any]]:
        symbol, interval = params.get("symbol", ""), params.get("interval", "")
        series = self._series.get((market, symbol, interval))
        if series is None:
            if not any(sym == symbol for (_, sym, _) in self._series):
                raise _ApiError(-1121, "Invalid symbol.")
            raise _ApiError(-1120, "Invalid interval.")
        limit = int(params.get("limit", 500))
        if not 1 <= limit <= _MAX_LIMIT[market]:
            raise _ApiError(-1130, f"Invalid limit {limit}; max {_MAX_LIMIT[market]}.")
        visible = int(
            np.searchsorted(series.open_time, now, side="left")
        )  # closed candles only  # opened by now
        end = visible
        if "endTime" in params:
            end = min(end, int(np.searchsorted(series.open_time, int(params["endTime"]), side="right")))
        if "startTime" in params:
            lo = int(np.searchsorted(series.open_time, int(params["startTime"]), side="left"))
            return [list(r) for r in series.rows[lo : min(end, lo + limit)]]
        return [list(r) for r in series.rows[max(0, end - limit) : end]]

    def _ticker(self, symbol: str, series: _Series, now: int) -> dict[str, Any]:
        visible = int(np.searchsorted(series.open_time, now, side="left"))  # closed candles only
        day = series.rows[max(0, visible - 24) : visible]
        quote = sum(float(r[4]) * float(r[5]) for r in day)
        return {
            "symbol": symbol,
            "lastPrice": day[-1][4] if day else "0",
            "volume": str(sum(float(r[5]) for r in day)),
            "quoteVolume": str(quote),
            "openTime": day[0][0] if day else now,
            "closeTime": day[-1][6] if day else now,
        }
