"""A small local Binance REST exchange on 127.0.0.1, serving real candles.

It speaks the public market-data endpoints the python-binance ``Client`` uses, with
Binance's pagination semantics, a settable clock (a candle is served once it has opened,
so the newest one may still be forming), request-weight headers, and fault injection:
429/418 with ``Retry-After``, 500, slow responses (timeouts), malformed rows and
unreadable bodies. Tests point the real client at it; later, ``qt live --replay`` does.

Endpoints: ``/api/v3/{ping,time,exchangeInfo,klines,ticker/24hr}`` and
``/fapi/v1/{ping,time,exchangeInfo,klines,ticker/24hr}``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

from core.candles import KLINE_COLUMNS, from_store_frame

_PREFIX = {"/api/v3": "spot", "/fapi/v1": "futures"}
_MAX_LIMIT = {"spot": 1000, "futures": 1500}
_KLINE_WEIGHT = 2
FAULT_KINDS = ("429", "418", "500", "timeout", "malformed", "invalid_json")


@dataclass
class Fault:
    """A fault served instead of (or on top of) the next matching response.

    Attributes:
        kind: one of :data:`FAULT_KINDS`.
        path: the request path it applies to, e.g. ``/api/v3/klines``.
        times: how many matching requests it affects.
        retry_after: seconds in the ``Retry-After`` header (429/418).
        delay_s: how long a ``timeout`` fault stalls before answering.
    """

    kind: str
    path: str = "/api/v3/klines"
    times: int = 1
    retry_after: int = 1
    delay_s: float = 2.0


@dataclass
class _Series:
    open_time: np.ndarray  # int64 ms, sorted
    rows: list[list[Any]]  # Binance's 12-field kline rows


class FakeExchange:
    """Local Binance market-data server. Use as a context manager or ``start()``/``stop()``.

    Args:
        now_ms: the exchange clock; None means just after the newest candle closed.
        host: address to bind (loopback only).
    """

    def __init__(self, now_ms: int | None = None, host: str = "127.0.0.1") -> None:
        if not host.startswith("127.") and host != "localhost":
            raise ValueError("the fake exchange binds to loopback addresses only")
        self.host = host
        self.now_ms = now_ms
        self.used_weight_override: int | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._weight: tuple[int, int] = (0, 0)  # (minute, used)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- data -------------------------------------------------------------------------
    def add_candles(self, symbol: str, interval: str, candles: pd.DataFrame, market: str = "spot") -> None:
        """Serve candles: a store frame (``open_time`` index) or kline columns in int ms."""
        raw = from_store_frame(candles) if isinstance(candles.index, pd.DatetimeIndex) else candles
        raw = raw.sort_values("open_time")
        rows = [
            [_field(col, v) for col, v in zip(KLINE_COLUMNS, rec, strict=True)] + ["0"]
            for rec in raw[list(KLINE_COLUMNS)].itertuples(index=False, name=None)
        ]
        times = raw["open_time"].to_numpy(dtype=np.int64)
        with self._lock:
            self._series[(market, symbol, interval)] = _Series(times, rows)

    def clock(self) -> int:
        """The exchange's current time in ms."""
        if self.now_ms is not None:
            return self.now_ms
        newest = [int(s.rows[-1][6]) for s in self._series.values() if s.rows]
        return max(newest) + 1 if newest else int(time.time() * 1000)

    def inject(self, fault: Fault) -> None:
        """Queue a fault for the next matching request(s)."""
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault.kind!r}; known: {FAULT_KINDS}")
        with self._lock:
            self._faults.append(fault)

    # ----- server -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the fake exchange is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def spot_url(self) -> str:
        """Value for python-binance's ``API_URL`` (``QT_BINANCE_SPOT_URL``)."""
        return f"{self.url}/api"

    @property
    def futures_url(self) -> str:
        """Value for python-binance's ``FUTURES_URL`` (``QT_BINANCE_FUTURES_URL``)."""
        return f"{self.url}/fapi"

    def start(self) -> FakeExchange:
        """Listen on a free port in a daemon thread."""
        handler = type("Handler", (_Handler,), {"exchange": self})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- request handling ---------------------------------------------------------------
    def handle(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        """Answer one GET: ``(status, headers, body)`` — body JSON-able, or str sent raw."""
        with self._lock:
            self.requests.append((path, params))
            fault = self._take_fault(path)
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._add_weight(path))}
        if fault is not None and fault.kind in ("429", "418"):
            headers["Retry-After"] = str(fault.retry_after)
            return int(fault.kind), headers, {"code": -1003, "msg": "Too many requests; slow down."}
        if fault is not None and fault.kind == "500":
            return 500, headers, "Internal Server Error"
        if fault is not None and fault.kind == "timeout":
            time.sleep(fault.delay_s)
        if fault is not None and fault.kind == "invalid_json":
            return 200, headers, "<html>gateway error</html>"
        prefix, _, endpoint = path.rpartition("/")
        if prefix.endswith("/ticker"):
            prefix, endpoint = prefix[: -len("/ticker")], "ticker/" + endpoint
        market = _PREFIX.get(prefix)
        if market is None:
            return 404, headers, {"code": -1, "msg": f"unknown path {path}"}
        try:
            status, body = self._route(market, endpoint, params)
        except _ApiError as err:
            return 400, headers, {"code": err.code, "msg": err.msg}
        if fault is not None and fault.kind == "malformed" and isinstance(body, list) and len(body) > 1:
            body[1] = [body[1][0], "not-a-number", *body[1][2:6]]  # short row, bad price
        return status, headers, body

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.path == path:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _add_weight(self, path: str) -> int:
        if self.used_weight_override is not None:
            return self.used_weight_override
        minute = int(time.time() // 60)
        with self._lock:
            start, used = self._weight
            used = (used if start == minute else 0) + (_KLINE_WEIGHT if path.endswith("klines") else 1)
            self._weight = (minute, used)
        return used

    def _route(self, market: str, endpoint: str, params: dict[str, str]) -> tuple[int, Any]:
        now = self.clock()
        if endpoint == "ping":
            return 200, {}
        if endpoint == "time":
            return 200, {"serverTime": now}
        if endpoint == "exchangeInfo":
            return 200, self._exchange_info(market, now)
        if endpoint == "klines":
            return 200, self._klines(market, params, now)
        if endpoint == "ticker/24hr":
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
        raise _ApiError(-1, f"unknown endpoint {endpoint}")

    def _exchange_info(self, market: str, now: int) -> dict[str, Any]:
        symbols = sorted({sym for (m, sym, _) in self._series if m == market})
        return {
            "timezone": "UTC",
            "serverTime": now,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
            ],
            "symbols": [
                {"symbol": s, "status": "TRADING", "baseAsset": s.removesuffix("USDT"), "quoteAsset": "USDT"}
                for s in symbols
            ],
        }

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
        visible = int(np.searchsorted(series.open_time, now, side="right"))  # opened by now
        end = visible
        if "endTime" in params:
            end = min(end, int(np.searchsorted(series.open_time, int(params["endTime"]), side="right")))
        if "startTime" in params:
            lo = int(np.searchsorted(series.open_time, int(params["startTime"]), side="left"))
            return [list(r) for r in series.rows[lo : min(end, lo + limit)]]
        return [list(r) for r in series.rows[max(0, end - limit) : end]]

    def _ticker(self, symbol: str, series: _Series, now: int) -> dict[str, Any]:
        visible = int(np.searchsorted(series.open_time, now, side="right"))
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


class _ApiError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _field(column: str, value: Any) -> Any:
    """A kline field as Binance sends it: integers for times/trades, strings for decimals."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if column in ("open_time", "close_time", "trades"):
        return int(value)
    return repr(float(value)) if not isinstance(value, str) else value


class _Handler(BaseHTTPRequestHandler):
    exchange: FakeExchange

    def do_GET(self) -> None:
        parsed = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        status, headers, body = self.exchange.handle(parsed.path, params)
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""
