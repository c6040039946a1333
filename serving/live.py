"""The live tick's work, as plain functions composed by :class:`LiveLoop` (and ``flows/live.py``).

One tick: resolve the ``champion`` alias (cheap) and load the model only when its version
changes (:class:`ModelCache`, per version in memory); update the universe's candles through
the ingest path (closed candles only); when a new bar has closed, let the paper broker
trigger its exits on it, compute features with the training function on the newest candles,
predict P(up) with the champion (and the challenger in shadow, journalled beside, never
traded), ask the strategy (:mod:`tasks.strategy`, the backtest's own) what to do, execute
it through the broker, reconcile, and journal everything with the model version.

No champion, a model that fails to load or to predict, or features that fail: no new
positions, the error journalled and in the tick's report; open positions keep their exits.
There is never a fallback strategy.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.candles import interval_ms
from core.errors import QTError
from core.settings import Settings
from serving.brokers.base import Broker, ProtectedEntry
from serving.journal import Journal, report
from serving.journal import models as db
from tasks.features import FeatureSpec, feature_matrix
from tasks.store import CandleStore
from tasks.strategy.engine import Decisions, Strategy
from tasks.strategy.risk import Book, Held
from tasks.strategy.sizing import DEFAULT_SIZING

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveConfig:
    """What the loop trades.

    Attributes:
        symbols: the universe.
        interval: candle interval of the model.
        market: spot or futures (a registered model per interval and market).
        strategy: the strategy the backtest evaluates.
        shadow: also predict with the challenger (journalled, never traded).
        model_policy: trade the policy registered with the model (else ``strategy``'s own).
        model_alias: the registry alias traded: ``champion``; ``challenger`` only for
            demonstrations of a model the gate refused (never the live deployment).
    """

    symbols: tuple[str, ...]
    interval: str = "1h"
    market: str = "spot"
    strategy: Strategy = field(default_factory=Strategy)
    shadow: bool = True
    model_policy: bool = True
    model_alias: Literal["champion", "challenger"] = "champion"

    @classmethod
    def of(cls, settings: Settings, symbols: tuple[str, ...], interval: str, market: str) -> LiveConfig:
        """The configuration a deployment trades: the default strategy, sized by ``settings.sizing_rule``.

        The default rule keeps :data:`~tasks.strategy.sizing.DEFAULT_SIZING` itself, the object
        the backtest's default :class:`Strategy` holds.
        """
        sizing = DEFAULT_SIZING
        if settings.sizing_rule != sizing.rule:
            sizing = replace(sizing, rule=settings.sizing_rule)
        return cls(symbols, interval, market, Strategy(sizing=sizing))

    def strategy_for(self, ensemble: Any) -> Strategy:
        """The strategy to trade with this model: its registered policy, long only on spot."""
        policy = ensemble.policy if self.model_policy else self.strategy.policy
        if self.market == "spot":
            policy = replace(policy, allow_short=False)
        return replace(self.strategy, policy=policy)

    @property
    def step(self) -> pd.Timedelta:
        """The interval as a Timedelta."""
        return pd.Timedelta(milliseconds=interval_ms(self.interval))


@dataclass
class TickReport:
    """What one tick did (the ``qt live --json`` summary adds these up)."""

    bar_time: pd.Timestamp | None = None
    model_version: str | None = None
    signals: int = 0
    orders: int = 0
    fills: int = 0
    vetoes: int = 0
    unprotected_positions: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # phase → seconds
    mode: str | None = None  # the risk engine's mode at the bar's close


class ModelCache:
    """The model behind an alias, resolved on every call and loaded once per version."""

    def __init__(self, settings: Settings, interval: str, market: str) -> None:
        self.settings, self.interval, self.market = settings, interval, market
        self.loaded: dict[str, Any] = {}

    def current(self, alias: str = "champion") -> tuple[Any, str | None, str | None]:
        """(ensemble, version, error): the ensemble is None when there is none or it failed to load."""
        from model_registry.registry import alias_version, load_ensemble

        try:
            version = alias_version(self.settings, self.interval, alias, market=self.market)
        except QTError as err:
            return None, None, f"registry: {err}"
        if version is None:
            return None, None, f"no {alias} registered: no new positions (run qt retrain)"
        if version not in self.loaded:
            try:
                self.loaded[version] = load_ensemble(
                    self.settings, self.interval, version, market=self.market
                )[0]
            except QTError as err:
                return None, version, f"{alias} v{version} cannot be loaded: {err}"
            log.info("loaded %s v%s", alias, version)
        return self.loaded[version], version, None


def update_candles(
    settings: Settings, source: Any, config: LiveConfig, server_now_ms: int | None = None
) -> dict[str, str]:
    """Fetch the universe's new closed candles, validate them in one GX run, store them.

    ``server_now_ms``: the venue's clock for the tick (one reading decides for every symbol
    which candles have closed; None: read per symbol). Returns symbol → error for those that
    could not be fetched or failed validation (quarantined, nothing stored).
    """
    from tasks.ingest import fetch_binance, store_batches

    errors, batches = {}, []
    for symbol in config.symbols:
        try:
            batches.append(
                fetch_binance(
                    symbol, config.interval, config.market, None, None, settings, source, server_now_ms
                )
            )
        except QTError as err:
            errors[symbol] = str(err)
    batches = [b for b in batches if not b.raw.empty]  # nothing new: nothing to validate
    try:
        stored = store_batches(batches, settings)
    except QTError as err:  # a conflict with stored candles: the venue rewrote history
        return errors | {b.symbol: str(err) for b in batches}
    for batch, done in zip(batches, stored, strict=True):
        if isinstance(done, Exception):
            errors[batch.symbol] = str(done)
    return errors


def recent_candles(store: CandleStore, config: LiveConfig, rows: int) -> dict[str, pd.DataFrame]:
    """The newest ``rows`` stored candles of each symbol (and of the cross-asset symbol)."""
    spec = FeatureSpec()
    wanted = list(
        dict.fromkeys([*config.symbols, *([spec.cross_asset_symbol] if spec.cross_asset_symbol else [])])
    )
    out = {}
    for symbol in wanted:
        span = store.time_range(symbol, config.interval, config.market)
        if span is None:
            continue
        start = span[1] - (rows - 1) * config.step
        out[symbol] = store.read(symbol, config.interval, config.market, start=start)
    return out


def latest_features(candles: dict[str, pd.DataFrame], config: LiveConfig) -> pd.DataFrame:
    """Feature rows of the newest candles, with the function training used (unlabelled rows kept)."""
    symbols = [s for s in config.symbols if s in candles]
    return feature_matrix(candles, interval_ms(config.interval), FeatureSpec(), include_unlabeled=True,
                          symbols=symbols)  # fmt: skip


def predict(ensemble: Any, features: pd.DataFrame, bar_time: pd.Timestamp) -> pd.DataFrame:
    """P(up) of each symbol's row at ``bar_time`` (earlier rows are the sequence models' history)."""
    upto = features[features["open_time"] <= bar_time]
    context = upto.groupby("symbol").tail(ensemble.history_rows + 1)
    out = ensemble.predict(context)
    return out[pd.to_datetime(out["open_time"], utc=True) == bar_time].reset_index(drop=True)


def features_hash(rows: pd.DataFrame) -> str:
    """A digest of the feature values a prediction used (to prove later what the model saw)."""
    numeric = [
        c for c in rows.columns if c not in ("symbol", "open_time") and not str(c).startswith("target_")
    ]
    values = rows[numeric].to_numpy(dtype=np.float64)
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()[:16]


def book_of(
    journal: Journal,
    config: LiveConfig,
    candles: dict[str, pd.DataFrame],
    cash: float,
    start_equity: float | None,
    bar_time: pd.Timestamp,
) -> Book:  # fmt: skip
    """The strategy's :class:`Book` at ``bar_time``'s close, from the journal and the candles.

    ``cash``: the account's quote balance (spot: after paying for what it holds).
    ``start_equity``: the account's equity when trading began (the first peak); None: the
    first equity snapshot (a venue account starts where it stands).
    """
    prices = {s: float(c["close"].iloc[-1]) for s, c in candles.items() if len(c)}
    held: dict[str, Held] = {}
    for row in journal.open_positions():
        opened = pd.Timestamp(row.opened_at)
        closes = candles[row.symbol]["close"] if row.symbol in candles else pd.Series(dtype=np.float64)
        entry = float(row.entry_price)
        since = [entry, *closes[closes.index >= opened].astype(float)]
        stop = float(row.stop) if row.stop is not None else entry
        initial = float(row.initial_stop) if row.initial_stop is not None else stop
        side: Literal["long", "short"] = "long" if row.side == "long" else "short"
        best = max(since) if side == "long" else min(since)
        held[row.symbol] = Held(row.symbol, side, float(row.quantity), entry, stop, initial, best, opened)
    if config.market == "spot":
        equity = cash + sum(h.quantity * prices.get(s, h.entry) for s, h in held.items())
    else:
        equity = cash + sum(h.unrealised(prices.get(s, h.entry)) for s, h in held.items())
    snapshots = journal.read(_snapshots)
    earlier = [e for t, e in snapshots if t < bar_time.normalize()]
    start = start_equity if start_equity is not None else (snapshots[0][1] if snapshots else equity)
    book = Book(equity, max([start, equity, *(e for _, e in snapshots)]),
                earlier[-1] if earlier else start, held, prices=prices)  # fmt: skip
    trades = report.trades(journal)
    book.r_multiples = [float(t["r_multiple"] or 0.0) for t in trades]
    for t, r in zip(trades, book.r_multiples, strict=True):
        book.symbol_r.setdefault(t["symbol"], []).append(r)
    book.last_exit = {t["symbol"]: pd.Timestamp(t["closed_at"]) for t in trades}
    return book


def _snapshots(session: Any) -> list[tuple[pd.Timestamp, float]]:
    rows = session.query(db.EquitySnapshot).order_by(db.EquitySnapshot.time)
    return [(pd.Timestamp(e.time), float(e.equity)) for e in rows]


def snapshot_equity(journal: Journal, bar_time: pd.Timestamp, equity: float, cash: float) -> None:
    """The book's equity at ``bar_time``'s close (the day's start and the peak are read from these)."""
    with journal.transaction() as session:
        session.add(
            db.EquitySnapshot(time=bar_time.to_pydatetime(), equity=_money(equity), cash=_money(cash))
        )


def _money(value: float) -> Decimal:
    return Decimal(str(round(value, 8)))


def execute(broker: Broker, decisions: Decisions, bar_time: pd.Timestamp) -> tuple[int, list[str]]:
    """Closes, stop moves and entries through the broker: (orders placed, errors)."""
    placed, errors = 0, []
    held = {p.symbol: p for p in broker.positions()}
    for symbol, reason in decisions.closes.items():
        if symbol not in held:
            continue
        try:
            if broker.close_position(symbol, bar_time, reason) is not None:
                placed += 1
        except QTError as err:
            errors.append(f"{symbol}: close ({reason}) failed: {err}")
    for symbol, stop in decisions.stop_moves.items():
        if symbol in held and symbol not in decisions.closes:
            try:
                broker.replace_stop(symbol, Decimal(str(stop)), bar_time)
                placed += 1
            except QTError as err:
                errors.append(f"{symbol}: moving the stop to {stop} failed: {err}")
    for entry in decisions.entries:
        protected = ProtectedEntry(
            entry.symbol, entry.side, Decimal(str(entry.quantity)), Decimal(str(entry.stop)),
            tuple((Decimal(str(p)), Decimal(str(q))) for p, q in entry.take_profits), bar_time,
            Decimal(str(entry.reference_price)),
        )  # fmt: skip
        try:
            placed += len(broker.place_protected(protected))
        except QTError as err:
            errors.append(f"{entry.symbol}: entry refused: {err}")
    return placed, errors


def journal_signals(
    journal: Journal,
    predictions: pd.DataFrame,
    version: str,
    interval: str,
    digest: dict[str, str],
    role: str = "champion",
) -> dict[str, int]:
    """One signal row per prediction (every model's P(up)); symbol → signal id."""
    ids = {}
    label = version if role == "champion" else f"{version} ({role})"
    with journal.transaction() as session:
        for row in predictions.to_dict("records"):
            p_up = {str(k)[2:]: float(v) for k, v in row.items() if str(k).startswith("p_") and k != "p_up"}
            p_up["ensemble"] = float(row["p_up"])
            symbol = str(row["symbol"])
            when = pd.Timestamp(row["open_time"]).to_pydatetime()
            signal = db.Signal(
                time=when, symbol=symbol, interval=interval, model_version=label, p_up=p_up,
                features_hash=digest.get(symbol, ""),
            )  # fmt: skip
            session.add(signal)
            session.flush()
            ids[symbol] = signal.id
    return ids


def journal_decisions(
    journal: Journal, decisions: Decisions, bar_time: pd.Timestamp, signal_ids: dict[str, int], version: str
) -> None:
    """Entries, closes, stop moves and vetoes (with their reasons) as decision rows."""
    when = bar_time.to_pydatetime()
    rows: list[tuple[str, str, Decimal, str]] = [
        (e.symbol, f"enter_{e.side}", Decimal(str(e.quantity)), f"v{version}") for e in decisions.entries
    ]
    rows += [(symbol, "exit", Decimal(0), reason) for symbol, reason in decisions.closes.items()]
    rows += [
        (symbol, "move_stop", Decimal(0), f"stop to {to}") for symbol, to in decisions.stop_moves.items()
    ]
    rows += [(symbol, "veto", Decimal(0), reason) for symbol, reason in decisions.vetoes]
    with journal.transaction() as session:
        for symbol, action, size, reason in rows:
            decision = db.Decision(
                symbol=symbol, bar_time=when, action=action, size=size, reason=reason[:500],
                signal_id=signal_ids.get(symbol),
            )  # fmt: skip
            session.add(decision)
            if action == "veto":
                session.add(db.Veto(decision=decision, rule=reason.split(":")[0][:64], reason=reason[:500]))
