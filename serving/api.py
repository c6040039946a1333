"""The HTTP face of the live side: ``POST /api/predict``, health, the journal's views, metrics, dashboard.

:func:`create_app` builds a FastAPI app over one home: predictions come from the same
cached champion (:class:`~serving.live.ModelCache`: the alias resolved again at most a
second later, the model loaded once per version, so a promotion reaches the API within a
second, without a restart) and
the same feature code as the live flow, on the newest closed candles in the store. No
champion, or one that fails: 503 with the reason — never a made-up prediction.

Everything else reads the journal the live loop writes (positions with their live exits,
closed trades, daily P&L, live accuracy per model, the risk mode of the last tick) and the
store (data freshness). ``/metrics`` renders the same in Prometheus' text format.

Predictions are cached per (model version, symbol, newest stored bar): a new bar or a new
champion computes again; concurrent requests for the same bar compute once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.candles import interval_ms
from core.errors import QTError
from core.settings import Settings
from serving import live, supervisor
from serving.journal import Journal, analytics, report
from tasks.features import FeatureSpec
from tasks.store import CandleStore

#: symbols one request may ask for
MAX_SYMBOLS = 50
#: seconds a resolved ``champion`` alias is trusted before the registry is asked again
ALIAS_TTL_S = 1.0

Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2,30}$")]


class PredictRequest(BaseModel):
    """The symbols to predict (the newest closed bar of each)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"symbols": ["BTCUSDT"]}]})
    symbols: list[Symbol] = Field(min_length=1, max_length=MAX_SYMBOLS)


class Prediction(BaseModel):
    """The champion's call on one symbol's newest closed bar."""

    symbol: str
    open_time: datetime
    action: Literal["BUY", "SELL", "HOLD"]
    p_up: float
    confidence: float
    per_model: dict[str, float]
    stacker_weights: dict[str, float]


class PredictResponse(BaseModel):
    """INTERFACES.md's response of ``POST /api/predict``."""

    model_version: str
    predictions: list[Prediction]


class Problem(BaseModel):
    """Why a request could not be answered."""

    detail: str


@dataclass
class Service:
    """The home the API reads, and what it keeps between requests."""

    settings: Settings
    interval: str
    market: str

    def __post_init__(self) -> None:
        self.models = live.ModelCache(self.settings, self.interval, self.market)
        self.store = CandleStore(self.settings.store_dir)
        self.step = pd.Timedelta(milliseconds=interval_ms(self.interval))
        self.lock = threading.Lock()
        self.cache: dict[tuple[str, str], tuple[pd.Timestamp, dict[str, Any]]] = {}
        self._journal: Journal | None = None
        self.started = time.time()
        self._champion: tuple[float, tuple[Any, str | None, str | None]] | None = None

    def champion(self) -> tuple[Any, str | None, str | None]:
        """(ensemble, version, problem) of the ``champion`` alias, resolved every ALIAS_TTL_S.

        A registry read costs ≈ 8 ms, most of a cached prediction; the live loop resolves
        the alias once a tick.
        """
        now = time.monotonic()
        if self._champion is None or now - self._champion[0] >= ALIAS_TTL_S:
            self._champion = (now, self.models.current("champion"))
        return self._champion[1]

    def journal(self) -> Journal | None:
        """The home's journal, or None before the live loop wrote one (reading creates nothing)."""
        if self._journal is None:
            self._journal = Journal.if_exists(self.settings)
        return self._journal

    def newest(self, symbols: list[str]) -> dict[str, pd.Timestamp]:
        """Symbol → its newest stored open time (symbols without candles left out)."""
        out = {}
        for symbol in symbols:
            span = self.store.time_range(symbol, self.interval, self.market)
            if span is not None:
                out[symbol] = span[1]
        return out

    def predict(self, symbols: list[str]) -> PredictResponse:
        """The champion's predictions, or HTTPException 422 (unknown symbols) / 503 (no model)."""
        symbols = list(dict.fromkeys(symbols))
        newest = self.newest(symbols)
        unknown = [s for s in symbols if s not in newest]
        if unknown:
            known = ", ".join(self.store.symbols(self.interval, self.market)[:20]) or "none"
            raise HTTPException(
                422,
                [{"loc": ["body", "symbols", symbols.index(s)], "type": "unknown_symbol",
                  "msg": f"unknown symbol {s}: no {self.interval} {self.market} candles stored "
                         f"(known: {known})"}
                 for s in unknown],
            )  # fmt: skip
        ensemble, version, problem = self.champion()
        if ensemble is None or version is None:
            raise HTTPException(503, problem or "no champion")
        with self.lock:
            missing = [s for s in symbols if self.cache.get((version, s), (None,))[0] != newest[s]]
            if missing:
                self._compute(ensemble, version, missing, newest)
            rows = [self.cache[(version, s)][1] for s in symbols]
        return PredictResponse(model_version=version, predictions=[Prediction(**r) for r in rows])

    def _compute(
        self, ensemble: Any, version: str, symbols: list[str], newest: dict[str, pd.Timestamp]
    ) -> None:
        """Predict ``symbols``' newest bars in one batch and cache them (lock held)."""
        config = live.LiveConfig.of(self.settings, tuple(symbols), self.interval, self.market)
        rows = FeatureSpec().min_history + ensemble.history_rows + 1
        try:
            features = live.latest_features(live.recent_candles(self.store, config, rows), config)
            out = ensemble.predict(features.groupby("symbol").tail(ensemble.history_rows + 1))
        except QTError as err:
            raise HTTPException(503, f"champion v{version} cannot predict: {err}") from err
        weights = {k: float(v) for k, v in ensemble.weights.items()}
        for row in out.to_dict("records"):
            symbol = str(row["symbol"])
            when = pd.Timestamp(row["open_time"])
            if when != newest[symbol]:  # the newest bar has no feature row (too little history)
                raise HTTPException(503, f"{symbol}: no features for its newest bar {newest[symbol]}")
            per_model = {k[2:]: float(v) for k, v in row.items() if str(k).startswith("p_") and k != "p_up"}
            self.cache[(version, symbol)] = (
                newest[symbol],
                {"symbol": symbol, "open_time": when.to_pydatetime(), "action": str(row["action"]),
                 "p_up": float(row["p_up"]), "confidence": float(row["confidence"]),
                 "per_model": per_model, "stacker_weights": weights},
            )  # fmt: skip
        absent = [s for s in symbols if (version, s) not in self.cache]
        if absent:
            raise HTTPException(503, f"no features for {', '.join(absent)}")

    def closes(self, symbols: list[str], since: pd.Timestamp | None = None) -> dict[str, pd.Series]:
        """Stored closes of ``symbols`` (from ``since``)."""
        out = {}
        for symbol in symbols:
            if self.store.time_range(symbol, self.interval, self.market) is not None:
                out[symbol] = self.store.read(symbol, self.interval, self.market, start=since)["close"]
        return out

    def live_models(self) -> list[dict[str, Any]]:
        """Live accuracy, log loss and calibration per model (the traded model's signals)."""
        journal = self.journal()
        if journal is None:
            return []
        closes = self.closes(self.store.symbols(self.interval, self.market))
        return analytics.models(analytics.model_outcomes(journal, closes, self.step))

    def positions(self) -> list[dict[str, Any]]:
        """Open positions with their live exits and unrealised P&L at the newest stored close."""
        journal = self.journal()
        if journal is None:
            return []
        held = {p.symbol for p in journal.open_positions()}
        prices = {s: Decimal(str(c.iloc[-1])) for s, c in self.closes(sorted(held)).items() if len(c)}
        return report.positions(journal, prices)

    def symbols(self) -> list[dict[str, Any]]:
        """Per-symbol performance and the symbol manager's state as of the newest decided bar."""
        journal = self.journal()
        if journal is None:
            return []
        tick = analytics.last_tick(journal)
        now = pd.Timestamp(tick["bar"]) + self.step if tick and tick.get("bar") else None
        return analytics.symbols(journal, now=now, step=self.step)

    def health(self) -> dict[str, Any]:
        """Model loaded, last tick, venue reachability (as the last tick saw it), risk mode, freshness."""
        _, version, problem = self.champion()
        journal = self.journal()
        tick = analytics.last_tick(journal) if journal else None
        errors = journal.recent_events(1, "tick_errors") if journal else []
        last_errors = list(errors[0].detail.get("errors", [])) if errors else []
        now = pd.Timestamp.now(tz="UTC")
        fresh = {
            s: {
                "newest_open_time": t.isoformat(),
                "age_seconds": float((now - t - self.step).total_seconds()),
            }
            for s, t in self.newest(self.store.symbols(self.interval, self.market)).items()
        }
        unreachable = any("unreachable" in e for e in last_errors)
        return {
            "status": "ok" if version is not None and problem is None else "no_model",
            "model_version": version, "model_error": problem,
            "interval": self.interval, "market": self.market,
            "last_tick": tick, "last_tick_errors": last_errors[:20],
            "venue_reachable": None if tick is None else not unreachable,
            "risk_mode": tick.get("mode") if tick else None,
            "supervisor": _verdict_summary(supervisor.latest(journal) if journal else None),
            "data_freshness": fresh, "uptime_seconds": round(time.time() - self.started, 1),
        }  # fmt: skip


def _verdict_summary(verdict: dict[str, Any] | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    keys = ("event_time", "model_version", "mode", "reasons", "rows", "note", "retrain_run_id")
    return {k: verdict.get(k) for k in keys}


def create_app(settings: Settings, interval: str | None = None, market: str = "spot") -> FastAPI:
    """The API over ``settings``' home (its store, registry and journal)."""
    from serving import dashboard, metrics_export

    service = Service(settings, interval or settings.default_interval, market)
    app = FastAPI(
        title="Quantum Trader",
        version="0.1.0",
        description="The champion's predictions, the live journal, metrics and the trader's dashboard.",
    )
    app.state.service = service
    exporter = metrics_export.Exporter(service)

    @app.post(
        "/api/predict",
        responses={503: {"model": Problem, "description": "no champion loaded or it cannot predict"}},
    )
    def predict(request: PredictRequest) -> PredictResponse:
        """P(up), action and each model's P(up) for the newest closed bar of each symbol."""
        with exporter.timed("predict"):
            return service.predict(request.symbols)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Model version loaded, last tick, venue reachability, risk mode, data freshness."""
        return service.health()

    @app.get("/api/positions")
    def positions() -> list[dict[str, Any]]:
        """Open positions with their stop and take-profit legs as the venue holds them."""
        return service.positions()

    @app.get("/api/trades")
    def trades(limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> list[dict[str, Any]]:
        """The newest closed trades (exit price, fees, R multiple, model version), oldest first."""
        journal = service.journal()
        return report.trades(journal)[-limit:] if journal else []

    @app.get("/api/analytics/daily")
    def daily() -> list[dict[str, Any]]:
        """Closing equity, P&L and trades per UTC day."""
        journal = service.journal()
        return analytics.daily(journal) if journal else []

    @app.get("/api/analytics/models")
    def model_analytics() -> list[dict[str, Any]]:
        """Live accuracy, log loss and calibration per model on signals whose outcome is known."""
        return service.live_models()

    @app.get("/api/analytics/risk")
    def risk() -> dict[str, Any]:
        """Risk mode of the last tick, equity, peak, drawdown and open positions."""
        journal = service.journal()
        curve = analytics.equity_curve(journal) if journal else pd.Series(dtype=float)
        tick = analytics.last_tick(journal) if journal else None
        held = service.positions()
        equity = float(curve.iloc[-1]) if len(curve) else None
        peak = float(curve.max()) if len(curve) else None
        return {
            "mode": tick.get("mode") if tick else None, "equity": equity, "peak_equity": peak,
            "drawdown": (equity / peak - 1) if equity is not None and peak else None,
            "open_positions": len(held), "unprotected_positions": sum(p["stop"] is None for p in held),
        }  # fmt: skip

    @app.get("/api/analytics/symbols")
    def symbol_analytics() -> list[dict[str, Any]]:
        """Per symbol: closed trades, win rate, mean R, net P&L; enabled, reduced or disabled (until when)."""
        return service.symbols()

    @app.get("/api/analytics/supervisor")
    def supervision() -> dict[str, Any] | None:
        """The model supervisor's newest verdict: mode, reasons, every check, per-model figures, drift."""
        journal = service.journal()
        return supervisor.latest(journal) if journal else None

    @app.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        """Prometheus' text format: ticks, decisions, vetoes, orders, fills, risk, model, freshness."""
        body, content_type = exporter.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        """The trader's dashboard (refreshes itself)."""
        return HTMLResponse(dashboard.render(service))

    return app
