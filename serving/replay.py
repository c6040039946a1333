"""Replay: the whole live loop offline, the local exchange serving stored candles as they "close".

``qt live --replay-from DATE`` starts a replay home under ``<home>/replays/<stamp>/`` whose
store holds only the candles before DATE; the local exchange (:mod:`infra.exchange`) holds
them all and its clock walks bar by bar, so the real python-binance client fetches each new
candle through the ingest path, and the chosen broker (paper, or Binance against the local
exchange) trades it. The champion comes from the home's registry. The replay's journal,
broker state and equity are the replay home's, marked as a replay, never the live ones.
``qt live --replay DIR`` plays the candle files in DIR (data-dump layout) after the store's
newest candle the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import SecretStr

from core.candles import interval_ms
from core.errors import BadConfigError
from core.settings import Settings
from serving.brokers.factory import check_choice, open_broker
from serving.journal import Journal
from serving.journal import models as db
from serving.live import LiveConfig, TickReport
from serving.live_loop import LiveLoop, Summary
from tasks.store import CandleStore


def replay_home(settings: Settings, broker: str, market: str) -> Settings:
    """Settings of a fresh replay home (its own store and journal; the home's registry)."""
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%f")
    home = settings.home / "replays" / f"{stamp}-{broker}-{market}"
    home.mkdir(parents=True)
    return replay_settings(settings, home)


def replay_settings(settings: Settings, home: Path) -> Settings:
    """Settings of the replay home ``home``: its own store and journal, ``settings``' registry."""
    return settings.model_copy(
        update={"home": home, "mlflow_tracking_uri": settings.tracking_uri, "journal_url": None}
    )


def find_replay(settings: Settings, replay: str) -> Settings:
    """The settings of a replay's home: its folder, or ``latest`` (the newest under ``<home>/replays``).

    Raises:
        BadConfigError: no replay there (naming where it looked).
    """
    folder = settings.home / "replays"
    if replay == "latest":
        found = sorted(p for p in folder.glob("*") if p.is_dir()) if folder.exists() else []
        if not found:
            raise BadConfigError(
                f"--replay latest: no replay under {folder} (run qt demo or qt live --replay-from)"
            )
        path = found[-1]
    else:
        path = Path(replay).expanduser()
        if not (path / "journal" / "journal.db").exists():
            raise BadConfigError(f"--replay {replay}: no journal at {path / 'journal' / 'journal.db'}")
    return replay_settings(settings, path)


def replay(
    settings: Settings,
    config: LiveConfig,
    broker: str,
    start: pd.Timestamp,
    end: pd.Timestamp | None = None,
    speed: float = 0.0,
    candles: dict[str, pd.DataFrame] | None = None,
    on_tick: Callable[[TickReport], None] = lambda _: None,
    chaos: Mapping[int, Callable[[Any], None]] | None = None,
) -> tuple[Summary, Settings]:
    """Replay the bars from ``start`` to ``end`` (default: the newest) through the live loop.

    Args:
        settings: the home (its store and registry).
        config: universe, interval, market, strategy.
        broker: ``paper`` or ``binance`` (against the local exchange).
        start: the first bar replayed; only candles before it are history.
        end: the last bar replayed.
        speed: ticks per minute of real time relative to live (1000: a tick every 60 ms);
            0 replays as fast as the loop runs.
        candles: symbol → store frame to play (default: the home's store).
        on_tick: told each tick's report.
        chaos: tick number (0-based) → what to do to the local exchange before it (inject faults).

    Returns:
        The summary and the replay home's settings (its journal holds the session).
    """
    from infra.exchange import FakeExchange
    from tasks.ingest.binance import BinanceKlineSource

    check_choice(broker, config.market)
    store = CandleStore(settings.store_dir)
    frames = candles or {s: store.read(s, config.interval, config.market) for s in _symbols(store, config)}
    step = pd.Timedelta(milliseconds=interval_ms(config.interval))
    timeline = sorted(
        {t for f in frames.values() for t in f.index if t >= start and (end is None or t <= end)}
    )
    if not timeline:
        raise BadConfigError(f"--replay-from {start}: no stored {config.interval} candles from then on")
    target = replay_home(settings, broker, config.market)
    history = CandleStore(target.store_dir)
    for symbol, frame in frames.items():
        before = frame[frame.index < start]
        if len(before):
            history.upsert(symbol, config.interval, config.market, before)
    taker, maker = settings.fees_bps(config.market)
    exchange = FakeExchange(
        now_ms=_ms(timeline[0]), taker_bps=taker, maker_bps=maker, quote_balance=settings.paper_cash
    )
    for symbol, frame in frames.items():
        exchange.add_candles(symbol, config.interval, frame, market=config.market)
    with exchange:
        keys = {
            "binance_api_key": SecretStr(exchange.api_key),
            "binance_api_secret": SecretStr(exchange.api_secret),
        }
        urls = {"binance_spot_url": exchange.spot_url, "binance_futures_url": exchange.futures_url}
        target = target.model_copy(update=keys | urls)
        client = exchange.client(timeout_s=5.0)
        journal = Journal.open(target)
        with journal.transaction() as session:
            detail = {"home": str(settings.home), "from": start.isoformat(), "speed": speed, "broker": broker}
            session.add(db.Event(kind="replay", detail=detail))
        venue = open_broker(target, journal, broker, config.market, client=client)
        source = BinanceKlineSource(target, config.market, client=client)
        prices = price_of(client, config.market)
        loop = LiveLoop(
            target, config, venue, journal, source, prices, settings.paper_cash if broker == "paper" else None
        )
        summary = Summary()
        for number, bar in enumerate(timeline):
            if chaos and number in chaos:
                chaos[number](exchange)
            started = time.perf_counter()
            exchange.now_ms = _ms(bar + step)  # bar has closed; the next one is forming
            report = loop.tick()
            elapsed = time.perf_counter() - started
            summary.add(report, elapsed)
            on_tick(report)
            if speed > 0:
                time.sleep(max(0.0, 60.0 / speed - elapsed))
    return summary, target


def replay_files(directory: Path, settings: Settings, config: LiveConfig) -> dict[str, pd.DataFrame]:
    """Candle files in ``directory`` (data-dump layout) as store frames joined to the stored history.

    Raises:
        BadConfigError: no files for the universe in ``directory``, or they do not follow the store.
    """
    from core.candles import to_store_frame
    from tasks.ingest.files import read_candle_file

    store = CandleStore(settings.store_dir)
    frames = {}
    for symbol in _symbols(store, config):
        files = sorted(directory.glob(f"{symbol}-{config.interval}*"))
        if not files:
            continue
        raw = pd.concat([read_candle_file(f) for f in files], ignore_index=True)
        played = to_store_frame(raw.drop(columns=[c for c in ("source_file", "source_row") if c in raw]))
        stored = store.read(symbol, config.interval, config.market)
        frames[symbol] = pd.concat([stored, played[played.index > stored.index[-1]]]).sort_index()
    if not frames:
        raise BadConfigError(
            f"--replay {directory}: no {config.interval} candle files for {list(config.symbols)}"
        )
    return frames


def _symbols(store: CandleStore, config: LiveConfig) -> list[str]:
    from tasks.features import FeatureSpec

    stored = store.symbols(config.interval, config.market)
    missing = [s for s in config.symbols if s not in stored]
    if missing:
        raise BadConfigError(
            f"no stored {config.interval} {config.market} candles for {missing}; stored: {stored}"
        )
    cross = FeatureSpec().cross_asset_symbol
    return list(dict.fromkeys([*config.symbols, *([cross] if cross in stored else [])]))


class VenuePrices:
    """The venue's last prices: ``prices(symbol)`` for one, ``prices.many(symbols)`` in one request.

    Errors are ours: retryable, or refused naming the venue's code.
    """

    def __init__(self, client: Any, market: str) -> None:
        from serving.brokers.binance_venue import FuturesVenue

        self.ticker = client.futures_symbol_ticker if market == "futures" else client.get_symbol_ticker
        self.venue = FuturesVenue(client, 1, lambda _: None)

    def __call__(self, symbol: str) -> Decimal:
        """The last price of one symbol."""
        return Decimal(str(self.venue.call(self.ticker, symbol=symbol)["price"]))

    def many(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        """The prices of ``symbols`` the venue lists, from one request for all of its symbols."""
        wanted = set(symbols)
        return {
            t["symbol"]: Decimal(str(t["price"]))
            for t in self.venue.call(self.ticker)
            if t["symbol"] in wanted
        }


def price_of(client: Any, market: str) -> VenuePrices:
    """The venue's last price of a symbol (and of many at once, :meth:`VenuePrices.many`)."""
    return VenuePrices(client, market)


def _ms(when: pd.Timestamp) -> int:
    return int(when.value // 1_000_000)


def backtest_of(
    settings: Settings, ensemble: Any, config: LiveConfig, start: pd.Timestamp, end: pd.Timestamp
) -> Any:
    """The backtest with exits of what a replay from ``start`` to ``end`` traded (same candles and model).

    P(up) comes from the ensemble on the store's feature rows, the venue's filters from the
    local exchange (as the replay's paper broker had them), the costs from the settings. The
    bar after ``end`` fills what the last close decided, as the replay's last tick did.
    Returns a :class:`~tasks.strategy.simulate.Simulation`.
    """
    from infra.exchange import FakeExchange
    from serving.brokers.factory import venue_rules
    from tasks.features.dataset import features_from_store
    from tasks.strategy.simulate import Venue, simulate

    store = CandleStore(settings.store_dir)
    symbols = list(config.symbols)
    rows = features_from_store(store, symbols, config.interval, config.market, include_unlabeled=True)
    rows = rows[(rows["open_time"] >= start) & (rows["open_time"] <= end + config.step)].copy()
    rows["p_up"] = ensemble.predict_rows(rows)["p_stacker"].to_numpy()
    frames = {s: store.read(s, config.interval, config.market) for s in symbols}
    candles = pd.concat([f.assign(symbol=s).reset_index() for s, f in frames.items()])
    volume = ["quote_volume"] if "quote_volume" in candles else []
    rows = rows[["symbol", "open_time", "p_up", "atr_pct", "regime"]].merge(
        candles[["symbol", "open_time", "open", "high", "low", "close", *volume]],
        on=["symbol", "open_time"],
    )
    with FakeExchange(now_ms=_ms(start)) as exchange:
        for symbol, frame in frames.items():
            exchange.add_candles(symbol, config.interval, frame, market=config.market)
        rules = venue_rules(settings, config.market, exchange.client())
    funding = settings.funding_rate_8h * 10_000 if config.market == "futures" else 0.0
    venue = Venue(settings.fees_bps(config.market)[0], settings.slippage_bps, funding, settings.paper_cash)
    body, then = rows[rows["open_time"] <= end], rows[rows["open_time"] == end + config.step]
    cost = float(ensemble.costs.per_side())
    strategy = config.strategy_for(ensemble)
    history = candles[candles["open_time"] < start].groupby("symbol").tail(strategy.window + 1)
    return simulate(body, strategy, config.step, venue, ensemble.abs_return, cost, rules, then=then,
                    history=history)  # fmt: skip
