"""The live loop: one :meth:`LiveLoop.tick` composes the functions of :mod:`serving.live` in order.

Between ticks it keeps only what is cheap to rebuild: the model cache and the newest bar it
decided on (read back from the journal's signals after a restart, so a bar is never decided
twice). Everything else (positions, stops, equity, the track record) is read from the
journal and the broker every tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import func, select

from core.errors import QTError
from core.settings import Settings
from serving import live, supervisor
from serving.brokers.base import Broker
from serving.journal import Journal
from serving.journal import models as db
from tasks.features import FeatureSpec
from tasks.fills import Bar
from tasks.store import CandleStore
from tasks.strategy.engine import Decisions, Grids
from tasks.strategy.market import MarketWindow
from tasks.strategy.simulate import signals_at

if TYPE_CHECKING:
    from serving.replay import VenuePrices

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run of ticks did: the ``qt live --json`` document."""

    ticks: int = 0
    model_version: str | None = None
    signals: int = 0
    orders: int = 0
    vetoes: int = 0
    unprotected_positions: int = 0
    errors: list[str] = field(default_factory=list)
    tick_seconds: list[float] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)

    def add(self, report: live.TickReport, seconds: float) -> None:
        """Count one tick in."""
        self.ticks += 1
        self.model_version = report.model_version or self.model_version
        self.signals += report.signals
        self.orders += report.orders
        self.vetoes += report.vetoes
        self.unprotected_positions = report.unprotected_positions
        self.errors += [f"{report.bar_time}: {e}" for e in report.errors]
        self.tick_seconds.append(seconds)
        self.phases.append(dict(report.seconds))

    def phase_means(self) -> dict[str, float]:
        """Mean seconds per phase over the ticks after the first (which loads the model)."""
        later = self.phases[1:] or self.phases
        names = {name for phases in later for name in phases}
        return {name: sum(p.get(name, 0.0) for p in later) / len(later) for name in sorted(names)}


class LiveLoop:
    """The champion, the candles, the strategy and a broker, tick after tick.

    Args:
        settings: the home (store, registry).
        config: universe, interval, market, strategy.
        broker: where orders go.
        journal: the broker's journal.
        source: the kline source candles come from (python-binance against the venue).
        price_of: the venue's last prices (the paper broker fills at them).
        start_equity: the account's equity when trading began (None: its first snapshot).
    """

    def __init__(
        self,
        settings: Settings,
        config: live.LiveConfig,
        broker: Broker,
        journal: Journal,
        source: Any,
        price_of: VenuePrices,
        start_equity: float | None,
    ) -> None:
        self.settings, self.config, self.broker, self.journal = settings, config, broker, journal
        self.source, self.price_of, self.start_equity = source, price_of, start_equity
        self.models = live.ModelCache(settings, config.interval, config.market)
        self.store = CandleStore(settings.store_dir)
        self.rules = Grids(getattr(broker, "rules", None))
        self.last_bar = self._last_decided()
        self.seen: dict[str, pd.Timestamp] = (
            {s: self.last_bar for s in config.symbols} if self.last_bar else {}
        )

    def tick(self) -> live.TickReport:
        """One tick: model, candles, exits, prediction, decision, execution, reconcile, journal."""
        config, report = self.config, live.TickReport()
        clock = _Phases(report.seconds)
        ensemble, version, problem = self.models.current(config.model_alias)
        report.model_version = version
        report.errors += [problem] if problem else []
        clock.lap("model")
        try:  # one reading of the venue's clock decides for every symbol what has closed
            venue_ms: int | None = self.source.server_time_ms()
        except QTError as err:
            venue_ms = None
            report.errors.append(f"venue clock unreachable: {err}")
        if venue_ms is not None:
            failed = live.update_candles(self.settings, self.source, config, venue_ms)
            report.errors += [f"{symbol}: {error}" for symbol, error in failed.items()]
        spans = self._newest_per_symbol()
        report.errors += self._stale(spans, venue_ms)
        clock.lap("candles")
        newest = max(spans.values()) if spans else None
        if newest is None or (self.last_bar is not None and newest <= self.last_bar):
            self._reconcile(report)
            clock.lap("reconcile")
            self._journal_errors(report)
            return report
        report.bar_time = newest
        rows = FeatureSpec().min_history + (ensemble.history_rows if ensemble is not None else 0) + 1
        candles = live.recent_candles(self.store, config, rows)
        self._close_bars(candles, spans)  # exits first: the journal alone, it cannot fail on the venue
        clock.lap("exits")
        try:
            self._decide_and_trade(report, ensemble, str(version), candles, newest, clock)
        except QTError as err:
            report.errors.append(f"bar {newest}: no new positions ({err})")
        except (
            Exception
        ) as err:  # a bug must not stop the loop that keeps the stops alive: fail closed, loudly
            log.exception("tick at %s", newest)
            report.errors.append(f"bar {newest}: no new positions (unexpected {type(err).__name__}: {err})")
        self._reconcile(report)
        clock.lap("reconcile")
        self.last_bar = newest
        self._journal_errors(report, decided=True)
        return report

    def _journal_errors(self, report: live.TickReport, decided: bool = False) -> None:
        """A tick's errors, and for a decided bar what the tick did, for whoever reads it later.

        The ``tick`` event (bar, seconds, risk mode, model version, counts) is what the API's
        health, metrics and dashboard read; ``tick_errors`` what went wrong.
        """
        bar = report.bar_time.isoformat() if report.bar_time is not None else None
        if not (report.errors or decided):
            return
        with self.journal.transaction() as session:
            if decided:
                detail = {
                    "bar": bar, "seconds": round(sum(report.seconds.values()), 6), "mode": report.mode,
                    "model_version": report.model_version, "signals": report.signals,
                    "orders": report.orders, "vetoes": report.vetoes, "errors": len(report.errors),
                    "unprotected_positions": report.unprotected_positions,
                }  # fmt: skip
                session.add(db.Event(kind="tick", detail=detail))
            if report.errors:
                session.add(db.Event(kind="tick_errors", detail={"bar": bar, "errors": report.errors[:50]}))

    def _decide_and_trade(
        self, report: live.TickReport, ensemble: Any, version: str, candles: dict[str, pd.DataFrame],
        newest: pd.Timestamp, clock: _Phases,
    ) -> None:  # fmt: skip
        """Book, prediction, the strategy's decisions, execution, journal (no model: exits only)."""
        config = self.config
        cash = float(self.broker.balance().get(self.settings.quote_asset, Decimal(0)))
        book = live.book_of(self.journal, config, candles, cash, self.start_equity, newest)
        book.floor_mode = supervisor.floor_mode(self.journal, version)  # DEFENSIVE while the model drifts
        live.snapshot_equity(self.journal, newest, book.equity, cash)
        report.mode = str(config.strategy.risk.mode(book))
        decisions, signal_ids = Decisions(), {}
        if ensemble is not None:
            features = live.latest_features(candles, config)
            predictions = live.predict(ensemble, features, newest)
            context = features[["symbol", "open_time", "atr_pct", "regime"]]
            merged = predictions.merge(context, on=["symbol", "open_time"])
            merged = merged.merge(self._closes(candles, newest), on="symbol")
            digests = {
                s: live.features_hash(features[features["symbol"] == s].tail(1)) for s in merged["symbol"]
            }
            signal_ids = live.journal_signals(self.journal, predictions, version, config.interval, digests)
            report.signals = len(predictions)
            signals = signals_at(merged, ensemble.abs_return, float(ensemble.costs.per_side()))
            universe = {s: c for s, c in candles.items() if s in config.symbols}
            window = MarketWindow.of(universe, newest)
            decisions = config.strategy_for(ensemble).decide(book, signals, config.step, self.rules, window)
            self._shadow(features, newest, digests)
        clock.lap("predict")
        self._set_prices(newest + config.step)
        report.orders, errors = live.execute(self.broker, decisions, newest)
        report.errors += errors
        report.vetoes = len(decisions.vetoes)
        live.journal_decisions(self.journal, decisions, newest, signal_ids, version)
        self._tag_positions(version)
        clock.lap("execute")

    def run(
        self, ticks: int | None, pause: Callable[[], None], on_tick: Callable[[live.TickReport], None]
    ) -> Summary:
        """Tick ``ticks`` times (None: until interrupted), ``pause`` between ticks."""
        summary = Summary()
        done = 0
        while ticks is None or done < ticks:
            started = time.perf_counter()
            report = self.tick()
            summary.add(report, time.perf_counter() - started)
            on_tick(report)
            done += 1
            if ticks is None or done < ticks:
                pause()
        return summary

    # -- the pieces ---------------------------------------------------------------------------
    def _newest_per_symbol(self) -> dict[str, pd.Timestamp]:
        """Each tradable symbol's newest stored (closed) bar."""
        config = self.config
        spans = {s: self.store.time_range(s, config.interval, config.market) for s in config.symbols}
        return {s: span[1] for s, span in spans.items() if span is not None}

    def _stale(self, newest: dict[str, pd.Timestamp], now_ms: int | None) -> list[str]:
        """Symbols with no new closed candle for 3 intervals (they get no new positions)."""
        if now_ms is None:
            return []  # the venue's clock is unreachable: said once already
        now, step = pd.Timestamp(now_ms, unit="ms", tz="UTC"), self.config.step
        return [
            f"{symbol}: stale feed, no closed candle since {bar + step} (3 intervals or more)"
            for symbol, bar in newest.items()
            if now - (bar + step) >= 3 * step
        ]

    def _close_bars(self, candles: dict[str, pd.DataFrame], newest: dict[str, pd.Timestamp]) -> None:
        """The paper broker sees every bar that closed since it last looked: its exits trigger."""
        on_bar = getattr(self.broker, "on_bar", None)
        if on_bar is None:
            return  # a real venue triggers its own exits
        for symbol, last in newest.items():
            frame = candles.get(symbol)
            if frame is None:
                continue
            seen = self.seen.get(symbol, last - self.config.step)  # a fresh start: this bar only
            closed = frame[(frame.index <= last) & (frame.index > seen)]
            prices = closed[["open", "high", "low", "close"]].to_numpy(dtype=float)
            for when, (o, h, low, c) in zip(closed.index, prices, strict=True):
                on_bar(
                    symbol,
                    pd.Timestamp(when),
                    Bar(float(o), float(h), float(low), float(c)),
                    self.config.step,
                )
            self.seen[symbol] = max(last, seen)

    def _closes(self, candles: dict[str, pd.DataFrame], newest: pd.Timestamp) -> pd.DataFrame:
        rows = [(s, float(c["close"].loc[newest])) for s, c in candles.items() if newest in c.index]
        return pd.DataFrame(rows, columns=["symbol", "close"])

    def _set_prices(self, at: pd.Timestamp) -> None:
        """The paper broker fills at the venue's last price (in a replay, the next candle's open)."""
        set_price = getattr(self.broker, "set_price", None)
        if set_price is None:
            return
        try:
            prices = self.price_of.many(self.config.symbols)  # one request for the universe
        except QTError as err:
            log.warning("no prices from the venue (%s): fills keep the last ones", err)
            return
        for symbol in self.config.symbols:
            if symbol in prices:
                set_price(symbol, prices[symbol], at=at)
            else:
                log.warning("%s: the venue lists no price", symbol)

    def _shadow(self, features: pd.DataFrame, newest: pd.Timestamp, digests: dict[str, str]) -> None:
        """The challenger's predictions, journalled beside the champion's, never traded."""
        if not self.config.shadow or self.config.model_alias == "challenger":
            return
        challenger, version, _ = self.models.current("challenger")
        if challenger is None:
            return
        shadow = live.predict(challenger, features, newest)
        live.journal_signals(
            self.journal, shadow, str(version), self.config.interval, digests, role="challenger"
        )

    def _tag_positions(self, version: str) -> None:
        """New positions carry the model version that opened them."""
        with self.journal.transaction() as session:
            for position in session.scalars(select(db.Position).where(db.Position.model_version.is_(None))):
                position.model_version = version

    def _reconcile(self, report: live.TickReport) -> None:
        try:
            done = self.broker.reconcile()
        except QTError as err:
            report.errors.append(f"reconcile failed: {err}")
            return
        report.unprotected_positions = done.unprotected_positions
        if done.unprotected_positions:
            report.errors.append(f"{done.unprotected_positions} position(s) without a live stop")

    def _last_decided(self) -> pd.Timestamp | None:
        """The newest bar the champion was journalled predicting (a restart does not decide it again)."""
        query = select(func.max(db.Signal.time)).where(db.Signal.model_version.not_like("% (challenger)"))
        newest = self.journal.read(lambda s: s.scalar(query))
        return pd.Timestamp(newest) if newest is not None else None


class _Phases:
    """Seconds per phase of a tick, written into the report as they pass."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.mark = into, time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.into[phase] = self.into.get(phase, 0.0) + now - self.mark
        self.mark = now
