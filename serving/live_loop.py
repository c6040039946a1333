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
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from core.errors import QTError
from core.settings import Settings
from serving import live
from serving.brokers.base import Broker
from serving.journal import Journal
from serving.journal import models as db
from tasks.features import FeatureSpec
from tasks.fills import Bar
from tasks.store import CandleStore
from tasks.strategy.engine import Decisions
from tasks.strategy.simulate import Rules, signals_at

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


class LiveLoop:
    """The champion, the candles, the strategy and a broker, tick after tick.

    Args:
        settings: the home (store, registry).
        config: universe, interval, market, strategy.
        broker: where orders go.
        journal: the broker's journal.
        source: the kline source candles come from (python-binance against the venue).
        price_of: the venue's last price of a symbol (the paper broker fills at it).
        start_equity: the account's equity when trading began.
    """

    def __init__(
        self,
        settings: Settings,
        config: live.LiveConfig,
        broker: Broker,
        journal: Journal,
        source: Any,
        price_of: Callable[[str], Decimal],
        start_equity: float,
    ) -> None:
        self.settings, self.config, self.broker, self.journal = settings, config, broker, journal
        self.source, self.price_of, self.start_equity = source, price_of, start_equity
        self.models = live.ModelCache(settings, config.interval, config.market)
        self.store = CandleStore(settings.store_dir)
        self.rules = Rules(getattr(broker, "rules", None))
        self.last_bar = self._last_decided()

    def tick(self) -> live.TickReport:
        """One tick: model, candles, exits, prediction, decision, execution, reconcile, journal."""
        config, report = self.config, live.TickReport()
        ensemble, version, problem = self.models.current("champion")
        report.model_version = version
        if problem:
            report.errors.append(problem)
        report.errors += [
            f"{s}: {e}" for s, e in live.update_candles(self.settings, self.source, config).items()
        ]
        newest = self._newest_bar()
        if newest is None or (self.last_bar is not None and newest <= self.last_bar):
            self._reconcile(report)
            return report
        report.bar_time = newest
        rows = FeatureSpec().min_history + (ensemble.history_rows if ensemble is not None else 0) + 1
        candles = live.recent_candles(self.store, config, rows)
        self._close_bars(candles, newest)
        decisions, signal_ids = Decisions(), {}
        cash = float(self.broker.balance().get(self.settings.quote_asset, Decimal(0)))
        book = live.book_of(self.journal, config, candles, cash, self.start_equity, newest)
        live.snapshot_equity(self.journal, newest, book.equity, cash)
        if ensemble is not None:
            try:
                features = live.latest_features(candles, config)
                predictions = live.predict(ensemble, features, newest)
                merged = predictions.merge(
                    features[["symbol", "open_time", "atr_pct", "regime"]], on=["symbol", "open_time"]
                )
                merged = merged.merge(self._closes(candles, newest), on="symbol")
                digests = {
                    s: live.features_hash(features[features["symbol"] == s].tail(1)) for s in merged["symbol"]
                }
                signal_ids = live.journal_signals(
                    self.journal, predictions, str(version), config.interval, digests
                )
                report.signals = len(predictions)
                cost = float(ensemble.costs.per_side())
                signals = signals_at(merged, ensemble.abs_return, cost)
                decisions = config.strategy_for(ensemble).decide(
                    book, signals, config.step, self.rules.quantity, self.rules.price
                )
                self._shadow(features, newest, digests)
            except QTError as err:
                report.errors.append(f"prediction failed, no new positions: {err}")
        self._set_prices(newest + config.step)
        report.orders, errors = live.execute(self.broker, decisions, newest, self.price_of)
        report.errors += errors
        report.vetoes = len(decisions.vetoes)
        live.journal_decisions(self.journal, decisions, newest, signal_ids, str(version))
        self._tag_positions(str(version))
        self._reconcile(report)
        self.last_bar = newest
        return report

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
    def _newest_bar(self) -> pd.Timestamp | None:
        """The newest closed bar every tradable symbol has (a symbol behind the others waits)."""
        newest = [
            self.store.time_range(s, self.config.interval, self.config.market) for s in self.config.symbols
        ]
        known = [span[1] for span in newest if span is not None]
        return min(known) if known else None

    def _close_bars(self, candles: dict[str, pd.DataFrame], newest: pd.Timestamp) -> None:
        """The paper broker sees every bar that closed since the last tick: its exits trigger."""
        on_bar = getattr(self.broker, "on_bar", None)
        if on_bar is None:
            return  # a real venue triggers its own exits
        for symbol in self.config.symbols:
            frame = candles.get(symbol)
            if frame is None:
                continue
            first = self.last_bar if self.last_bar is not None else newest - self.config.step  # a fresh start
            closed = frame[(frame.index <= newest) & (frame.index > first)]
            prices = closed[["open", "high", "low", "close"]].to_numpy(dtype=float)
            for when, (o, h, low, c) in zip(closed.index, prices, strict=True):
                bar = Bar(float(o), float(h), float(low), float(c))
                on_bar(symbol, pd.Timestamp(when), bar, self.config.step)

    def _closes(self, candles: dict[str, pd.DataFrame], newest: pd.Timestamp) -> pd.DataFrame:
        rows = [(s, float(c["close"].loc[newest])) for s, c in candles.items() if newest in c.index]
        return pd.DataFrame(rows, columns=["symbol", "close"])

    def _set_prices(self, at: pd.Timestamp) -> None:
        """The paper broker fills at the venue's last price (in a replay, the next candle's open)."""
        set_price = getattr(self.broker, "set_price", None)
        if set_price is None:
            return
        for symbol in self.config.symbols:
            try:
                set_price(symbol, self.price_of(symbol), at=at)
            except QTError as err:
                log.warning("%s: no price (%s)", symbol, err)

    def _shadow(self, features: pd.DataFrame, newest: pd.Timestamp, digests: dict[str, str]) -> None:
        """The challenger's predictions, journalled beside the champion's, never traded."""
        if not self.config.shadow:
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
