"""The HTTP side of the fake exchange: the server, request handling, auth, routing and faults."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlparse

from infra.exchange.market import _MarketData
from infra.exchange.matching import _Matching
from infra.exchange.model import (
    _KLINE_WEIGHT,
    _MAX_RECV_WINDOW,
    _SIGNED,
    ERROR_MESSAGES,
    Fault,
    _ApiError,
    _int,
    _mandatory,
    _split,
)


class FakeExchange(_Matching, _MarketData):
    """Local Binance server. Use as a context manager or ``start()``/``stop()``.

    Args:
        now_ms: the exchange clock; None means just after the newest candle closed. Setting
            :attr:`now_ms` later (or :meth:`advance`) matches resting orders against every
            candle that closed in between.
        host: address to bind (loopback only).
        api_key: the key signed requests must send in ``X-MBX-APIKEY``.
        api_secret: the HMAC-SHA256 secret of ``signature``.
        maker_bps: fee of resting (limit) fills, in basis points of the notional.
        taker_bps: fee of market and triggered fills.
        quote_balance: starting USDT of the spot account and of the futures wallet.
    """

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

    def client(
        self, api_key: str | None = None, api_secret: str | None = None, timeout_s: float = 5.0
    ) -> Any:
        """A real python-binance ``Client`` pointed at this exchange (spot and futures)."""
        from binance.client import Client

        client = Client(api_key or self.api_key, api_secret or self.api_secret, ping=False)
        client.API_URL = client.API_TESTNET_URL = self.spot_url
        client.FUTURES_URL = client.FUTURES_TESTNET_URL = self.futures_url
        client.REQUEST_TIMEOUT = timeout_s
        return client

    def start(self) -> FakeExchange:
        """Listen on a free port in a daemon thread."""
        handler = type("Handler", (_Handler,), {"exchange": self})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True)
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
    def handle(
        self,
        path: str,
        params: dict[str, str],
        method: str = "GET",
        headers: dict[str, str] | None = None,
        payload: str = "",
    ) -> tuple[int, dict[str, str], Any]:
        """Answer one request: ``(status, headers, body)`` — body JSON-able, or str sent raw.

        ``params`` merges the query string and the form body; ``payload`` is both as sent
        (Binance's ``totalParams``, what the signature covers); ``headers`` keys are lower case.
        """
        market, endpoint = _split(path)
        signed = endpoint in _SIGNED
        with self._lock:
            self.requests.append((path, params))
            fault = self._take_fault(path, method, signed)
        out = {"X-MBX-USED-WEIGHT-1M": str(self._add_weight(path))}
        kind = fault.kind if fault is not None else ""
        if fault is not None and kind in ("429", "418"):
            out["Retry-After"] = str(fault.retry_after)
            return int(kind), out, {"code": -1003, "msg": "Too many requests; slow down."}
        if kind == "500":
            return 500, out, "Internal Server Error"
        if fault is not None and kind == "timeout":
            time.sleep(fault.delay_s)
        if kind == "invalid_json":
            return 200, out, "<html>gateway error</html>"
        if kind == "clock_skew":
            return 400, out, {"code": -1021, "msg": ERROR_MESSAGES[-1021]}
        if fault is not None and kind == "reject":
            return 400, out, {"code": fault.code, "msg": ERROR_MESSAGES.get(fault.code, "Order rejected.")}
        if market is None:
            return 404, out, {"code": -1, "msg": f"unknown path {path}"}
        try:
            with self._lock:
                if signed:
                    self._authenticate(params, headers or {}, payload)
                status, body = self._route(market, endpoint, method, path, params)
                if kind == "vanish" and isinstance(body, dict):
                    self._vanish_answered(market, body)
        except _ApiError as err:
            return err.status, out, {"code": err.code, "msg": err.msg}
        if fault is not None and kind == "accept_timeout":
            time.sleep(fault.delay_s)
        if kind == "503":
            msg = "Timeout waiting for response from backend server. "
            msg += "Send status unknown; execution status unknown."
            return 503, out, {"code": -1007, "msg": msg}
        if kind == "malformed" and isinstance(body, list) and len(body) > 1:
            body[1] = [body[1][0], "not-a-number", *body[1][2:6]]  # short row, bad price
        return status, out, body

    def _take_fault(self, path: str, method: str, signed: bool) -> Fault | None:
        for fault in self._faults:
            if fault.path not in (path, "*") or (fault.method or method).upper() != method.upper():
                continue
            if fault.kind == "clock_skew" and not signed:
                continue
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

    def _authenticate(self, params: dict[str, str], headers: dict[str, str], payload: str) -> None:
        """Binance's checks of a signed request, in its order: key, signature, timestamp."""
        key = headers.get("x-mbx-apikey")
        if not key:
            raise _ApiError(-2014, "API-key format invalid.", 401)
        if not hmac.compare_digest(key, self.api_key):
            raise _ApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        signature = params.get("signature", "")
        if not signature:
            raise _ApiError(-1102, _mandatory("signature"))
        signed_part = "&".join(p for p in payload.split("&") if not p.startswith("signature="))
        candidates = {signed_part, unquote_plus(signed_part)}  # values as sent, or as the client signed them
        if not any(hmac.compare_digest(signature, self._sign(c)) for c in candidates):
            raise _ApiError(-1022)
        stamp = _int(params, "timestamp")
        window = _int(params, "recvWindow", 5000)
        if window > _MAX_RECV_WINDOW:
            raise _ApiError(-1131, f"recvWindow must be less than {_MAX_RECV_WINDOW}")
        clocks = (int(time.time() * 1000) + self.clock_skew_ms, self.clock())
        if not any(stamp < now + 1000 and now - stamp <= window for now in clocks):
            ahead = all(stamp >= now + 1000 for now in clocks)
            msg = "Timestamp for this request was 1000ms ahead of the server's time." if ahead else None
            raise _ApiError(-1021, msg)

    def _sign(self, text: str) -> str:
        return hmac.new(self.api_secret.encode(), text.encode(), hashlib.sha256).hexdigest()

    def _vanish_answered(self, market: str, body: dict[str, Any]) -> None:
        key = ("algo", int(body["algoId"])) if "algoId" in body else (market, int(body.get("orderId", -1)))
        if key in self._orders:
            self._orders[key].vanished = True

    def _route(
        self, market: str, endpoint: str, method: str, path: str, params: dict[str, str]
    ) -> tuple[int, Any]:
        self._match()
        now = self.clock()
        if method == "GET" and endpoint in (
            "ping",
            "time",
            "exchangeInfo",
            "klines",
            "ticker/24hr",
            "ticker/price",
        ):
            return self._market_data(market, endpoint, params, now)
        handler = self._routes().get((market, method, endpoint))
        if handler is None:
            raise _ApiError(-1, f"unknown endpoint {method} {path}")
        return 200, handler(params, path)

    def _routes(self) -> dict[tuple[str, str, str], Callable[[dict[str, str], str], Any]]:
        return {
            ("spot", "POST", "order"): self._spot_new_order,
            ("spot", "GET", "order"): lambda p, _: self._spot_json(self._find("spot", p)),
            ("spot", "DELETE", "order"): self._spot_cancel,
            ("spot", "GET", "openOrders"): lambda p, _: [self._spot_json(o) for o in self._listed("spot", p)],
            ("spot", "GET", "allOrders"): lambda p, _: [
                self._spot_json(o) for o in self._listed("spot", p, False)
            ],
            ("spot", "GET", "account"): lambda p, _: self._spot_account(),
            ("spot", "GET", "myTrades"): lambda p, _: self._trades("spot", p),
            ("spot", "POST", "orderList/oco"): self._spot_new_oco,
            ("futures", "POST", "order"): self._futures_new_order,
            ("futures", "GET", "order"): lambda p, _: self._futures_json(self._find("futures", p)),
            ("futures", "DELETE", "order"): self._futures_cancel,
            ("futures", "GET", "openOrders"): lambda p, _: [
                self._futures_json(o) for o in self._listed("futures", p)
            ],
            ("futures", "GET", "allOrders"): lambda p, _: [
                self._futures_json(o) for o in self._listed("futures", p, False)
            ],
            ("futures", "POST", "algoOrder"): self._futures_new_algo,
            ("futures", "GET", "algoOrder"): lambda p, _: self._algo_json(self._find("algo", p)),
            ("futures", "DELETE", "algoOrder"): self._futures_cancel_algo,
            ("futures", "GET", "openAlgoOrders"): lambda p, _: [
                self._algo_json(o) for o in self._listed("algo", p)
            ],
            ("futures", "POST", "leverage"): self._futures_leverage,
            ("futures", "POST", "marginType"): self._futures_margin_type,
            ("futures", "GET", "positionRisk"): self._futures_positions,
            ("futures", "GET", "balance"): lambda p, _: self._futures_balance(),
            ("futures", "GET", "userTrades"): lambda p, _: self._trades("futures", p),
        }


class _Handler(BaseHTTPRequestHandler):
    exchange: FakeExchange

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def _answer(self, method: str) -> None:
        parsed = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        params |= {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out, answer = self.exchange.handle(parsed.path, params, method, headers, parsed.query + body)
        payload = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in out.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging."""
