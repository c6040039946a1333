"""The live loop: replay through the local exchange, parity with the backtest, hot reload, failing closed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.settings import Settings, configure_environment, load_settings
from infra.exchange import FakeExchange
from model_registry.ensemble import Ensemble
from model_registry.registry import register, set_alias
from serving.journal import Journal, report
from serving.journal import models as db
from serving.live import LiveConfig, TickReport
from serving.replay import backtest_of, replay
from tasks.features.dataset import features_from_store
from tasks.ingest import ingest_files
from tasks.ingest.sample import sample_paths
from tasks.store import CandleStore
from tasks.strategy.engine import Strategy
from tasks.strategy.policy import Policy
from tasks.strategy.sizing import DEFAULT_SIZING, Sizing
from tests.test_cli import qt

UNTIL = pd.Timestamp("2025-05-15", tz="UTC")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
HOUR = pd.Timedelta(hours=1)
#: trades on any call, so a short replay has trades to compare (the registered policy rarely trades)
EAGER = Strategy(policy=Policy(enter=0.0, exit=0.0, allow_short=False))


def _eager(market: str = "spot") -> LiveConfig:
    return LiveConfig(SYMBOLS, "1h", market, EAGER, model_policy=False)


@pytest.mark.parametrize("rule", ["fixed", "vol-target"])
def test_replay_gives_the_backtests_trades_positions_and_equity(
    trained: tuple[Settings, Ensemble], rule: str
) -> None:
    """Parity: the live loop (paper broker, local exchange) against the backtest with exits, same candles."""
    settings, ensemble = trained
    end = UNTIL + 15 * HOUR
    config = replace(_eager(), strategy=replace(EAGER, sizing=Sizing(rule=rule)))
    summary, home = replay(settings, config, "paper", UNTIL, end)
    assert summary.ticks == 16 and summary.errors == [] and summary.unprotected_positions == 0
    journal = Journal.open(home)
    backtest = backtest_of(settings, ensemble, config, UNTIL, end)
    live_trades = report.trades(journal)
    assert len(backtest.trades) >= 2 and len(live_trades) == len(backtest.trades)
    for live, sim in zip(live_trades, backtest.trades, strict=True):
        assert (live["symbol"], float(live["quantity"])) == (sim.symbol, pytest.approx(sim.quantity))
        assert float(live["entry_price"]) == pytest.approx(sim.entry_price, rel=1e-12)
        assert pd.Timestamp(live["closed_at"]) == sim.exit_time
        assert float(live["net_pnl"]) == pytest.approx(sim.net, abs=1e-6)  # within fee rounding
    held = {p.symbol: (float(p.quantity), float(p.entry_price)) for p in journal.open_positions()}
    assert held == {
        s: (pytest.approx(h.quantity), pytest.approx(h.entry)) for s, h in backtest.open_positions.items()
    }
    snapshots = journal.read(
        lambda s: [float(e.equity) for e in s.query(db.EquitySnapshot).order_by(db.EquitySnapshot.time)]
    )
    assert snapshots == pytest.approx(backtest.equity.to_list(), abs=1e-6)


def test_the_backtest_and_the_live_flow_size_with_one_default_object(
    trained: tuple[Settings, Ensemble], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment's configuration hands the very same Sizing to the live loop and the backtest."""
    import tasks.strategy.simulate as simulation

    settings, ensemble = trained
    config = LiveConfig.of(settings, SYMBOLS, "1h", "spot")
    seen: list[tuple[str, Sizing]] = []
    decide, simulate = Strategy.decide, simulation.simulate

    def live_decides(self: Strategy, *args: Any, **kwargs: Any) -> Any:
        seen.append(("live", self.sizing))
        return decide(self, *args, **kwargs)

    def backtest_simulates(rows: pd.DataFrame, strategy: Strategy, *args: Any, **kwargs: Any) -> Any:
        seen.append(("backtest", strategy.sizing))
        return simulate(rows, strategy, *args, **kwargs)

    monkeypatch.setattr(Strategy, "decide", live_decides)
    monkeypatch.setattr(simulation, "simulate", backtest_simulates)
    summary, _ = replay(settings, config, "paper", UNTIL, UNTIL + HOUR)
    backtest_of(settings, ensemble, config, UNTIL, UNTIL + HOUR)
    assert summary.errors == [] and {who for who, _ in seen} == {"live", "backtest"}
    assert all(sizing is DEFAULT_SIZING for _, sizing in seen) and DEFAULT_SIZING.rule == "fixed"
    assert Strategy().sizing is DEFAULT_SIZING  # the backtest's default strategy, e.g. qt's research
    kelly = LiveConfig.of(settings.model_copy(update={"sizing_rule": "kelly"}), SYMBOLS, "1h", "spot")
    assert kelly.strategy.sizing == replace(DEFAULT_SIZING, rule="kelly")  # QT_SIZING_RULE opts in


def test_promoting_during_a_replay_hot_reloads_without_losing_a_tick(
    trained: tuple[Settings, Ensemble],
) -> None:
    settings, ensemble = trained
    version = register(
        settings, ensemble, features_from_store(CandleStore(settings.store_dir), ["BTCUSDT"], "1h").tail(2)
    )
    seen: list[str | None] = []

    def promote_at_third(report: TickReport) -> None:
        seen.append(report.model_version)
        if len(seen) == 3:
            set_alias(settings, "1h", "champion", version)

    try:
        summary, home = replay(settings, _eager(), "paper", UNTIL, UNTIL + 5 * HOUR, on_tick=promote_at_third)
    finally:
        set_alias(settings, "1h", "champion", "1")
    assert summary.ticks == 6 and seen == ["1", "1", "1", version, version, version]
    signals = Journal.open(home).read(lambda s: [(x.time, x.model_version) for x in s.query(db.Signal)])
    assert sorted({t for t, _ in signals}) == list(pd.date_range(UNTIL, periods=6, freq="h").to_pydatetime())
    assert {v for t, v in signals if pd.Timestamp(t) >= UNTIL + 3 * HOUR} == {version}


def test_binance_replay_trades_through_the_local_exchange_with_every_position_protected(
    trained: tuple[Settings, Ensemble],
) -> None:
    settings, _ = trained
    summary, home = replay(settings, _eager(), "binance", UNTIL, UNTIL + 7 * HOUR)
    assert summary.ticks == 8 and summary.orders > 0 and summary.unprotected_positions == 0, summary.errors
    assert summary.model_version == "1"
    orders = Journal.open(home).read(lambda s: [o.client_order_id for o in s.query(db.Order)])
    assert len(orders) == len(set(orders))


def test_no_champion_means_no_new_positions_and_the_error_is_visible(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home")
    configure_environment(settings)
    for path in sample_paths(["BTCUSDT"], "1h"):
        ingest_files("BTCUSDT", "1h", "spot", [path], "sample", settings)
    config = LiveConfig(("BTCUSDT",), "1h", "spot", EAGER, model_policy=False)
    summary, home = replay(settings, config, "paper", UNTIL, UNTIL + HOUR)
    assert summary.ticks == 2 and summary.orders == 0 and summary.model_version is None
    assert any("no champion registered" in e for e in summary.errors)
    assert Journal.open(home).open_positions() == []


@pytest.mark.parametrize("broker", ["paper", "binance"])
def test_qt_live_replay_json_summary(trained: tuple[Settings, Ensemble], broker: str) -> None:
    settings, _ = trained
    done = qt("live", "--replay-from", str(UNTIL), "--replay-to", str(UNTIL + 2 * HOUR), "--broker", broker,
              "--speed", "1000", "--json", home=settings.home)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    keys = {"ticks", "model_version", "signals", "orders", "fills", "vetoes", "open_positions"}
    assert set(summary) >= keys | {"unprotected_positions", "closed_trades", "equity", "fees_paid"}
    assert summary["ticks"] == 3 and summary["model_version"] == "1" and summary["unprotected_positions"] == 0
    assert summary["signals"] == 9 and Path(summary["replay"]).is_relative_to(settings.home / "replays")


def test_qt_live_bad_input_is_exit_2(trained: tuple[Settings, Ensemble]) -> None:
    settings, _ = trained
    cases = [
        (["--once", "--minutes", "2"], "--once or --minutes"),
        (["--replay-from", "2025-05-15", "--broker", "ftx"], "--broker 'ftx'"),
        (["--replay-from", "2025-05-15", "--symbols", "DOGEUSDT"], "DOGEUSDT"),
        (["--replay-from", "2030-01-01"], "no stored 1h candles"),
    ]
    for args, says in cases:
        done = qt("live", *args, "--json", home=settings.home)
        assert done.returncode == 2, (args, done.stdout, done.stderr[-500:])
        assert says in json.loads(done.stdout)["error"], args


def test_exchange_down_for_several_ticks_fails_closed_then_catches_up(
    trained: tuple[Settings, Ensemble],
) -> None:
    """Every request fails for 3 ticks: no new positions meanwhile, then the missed bars are caught up."""
    from infra.exchange import Fault

    settings, _ = trained
    quick = settings.model_copy(update={"http_max_retries": 0})
    chaos = {2: lambda ex: ex.inject(Fault("500", "*", times=10**6)), 5: lambda ex: ex.clear_faults()}
    reports: list[TickReport] = []
    summary, home = replay(
        quick, _eager(), "paper", UNTIL, UNTIL + 7 * HOUR, on_tick=reports.append, chaos=chaos
    )
    assert summary.ticks == 8 and summary.unprotected_positions == 0
    assert all(r.errors and r.orders == 0 and r.bar_time is None for r in reports[2:5])
    assert reports[5].bar_time == UNTIL + 5 * HOUR  # 3 missed candles fetched at once; the newest decided
    assert reports[7].bar_time == UNTIL + 7 * HOUR and reports[7].errors == []
    journal = Journal.open(home)
    decided = journal.read(lambda s: sorted({x.time for x in s.query(db.Signal)}))
    assert len(decided) == 5  # the bars of the outage got no decision (fail closed), the rest did
    assert len(journal.recent_events(50, "tick_errors")) >= 3  # and the journal says why


def test_a_tick_reads_the_venue_clock_and_prices_once(trained: tuple[Settings, Ensemble]) -> None:
    """One server-time and one ticker request per tick whatever the universe (each is a round trip live)."""

    settings, _ = trained
    marks: list[tuple[FakeExchange, int]] = []  # the local exchange and its request count before tick 1
    replay(
        settings,
        _eager(),
        "paper",
        UNTIL,
        UNTIL + 2 * HOUR,
        chaos={1: lambda ex: marks.append((ex, len(ex.requests)))},
    )
    exchange, before = marks[0]
    paths = [path.rsplit("/", 1)[-1] for path, _ in exchange.requests[before:]]
    assert paths.count("time") == 2 and paths.count("price") == 2  # ticks 1 and 2
    assert paths.count("klines") == 2 * len(SYMBOLS)  # one new candle per symbol and tick


def test_a_stale_feed_is_reported_and_gets_no_new_positions(trained: tuple[Settings, Ensemble]) -> None:
    settings, _ = trained
    store = CandleStore(settings.store_dir)
    frames = {s: store.read(s, "1h", "spot") for s in SYMBOLS}
    frames["SOLUSDT"] = frames["SOLUSDT"][frames["SOLUSDT"].index <= UNTIL + HOUR]  # SOL stops after 01:00
    reports: list[TickReport] = []
    replay(settings, _eager(), "paper", UNTIL, UNTIL + 5 * HOUR, candles=frames, on_tick=reports.append)
    assert not any("SOLUSDT: stale" in e for r in reports[:4] for e in r.errors)
    assert any("SOLUSDT: stale feed" in e for e in reports[5].errors)
    assert all(r.bar_time is not None for r in reports)  # the others keep trading


def test_a_broken_model_artifact_means_no_new_positions(trained: tuple[Settings, Ensemble]) -> None:
    import shutil

    import mlflow

    settings, ensemble = trained
    version = register(
        settings, ensemble, features_from_store(CandleStore(settings.store_dir), ["BTCUSDT"], "1h").tail(2)
    )
    where = mlflow.MlflowClient().get_model_version_download_uri("quantum-trader-1h", version)
    shutil.rmtree(where.removeprefix("file://"))
    set_alias(settings, "1h", "champion", version)
    try:
        summary, home = replay(settings, _eager(), "paper", UNTIL, UNTIL + HOUR)
    finally:
        set_alias(settings, "1h", "champion", "1")
    assert summary.orders == 0 and any("cannot be loaded" in e for e in summary.errors)
    assert Journal.open(home).open_positions() == []


def test_the_live_flow_is_one_tick_as_a_prefect_flow_run(
    trained: tuple[Settings, Ensemble], prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment's flow against the local exchange: the newest stored bar decided by the champion."""
    from flows.live import live_flow

    settings, _ = trained
    store = CandleStore(settings.store_dir)
    newest = max(span[1] for s in SYMBOLS if (span := store.time_range(s, "1h", "spot")) is not None)
    with FakeExchange(now_ms=int((newest + HOUR).value // 1_000_000)) as exchange:
        for symbol in SYMBOLS:
            exchange.add_candles(symbol, "1h", store.read(symbol, "1h", "spot"))
        monkeypatch.setenv("QT_BINANCE_SPOT_URL", exchange.spot_url)
        done = live_flow(home=str(settings.home), broker="paper", market="spot")
    assert done["model_version"] == "1" and pd.Timestamp(done["bar_time"]) == newest
    assert done["signals"] == 3 and done["unprotected_positions"] == 0, done["errors"]


def test_qt_live_once_against_the_venue_journals_into_the_home(
    trained: tuple[Settings, Ensemble], tmp_path: Path
) -> None:
    """``qt live --once`` with the venue's endpoints (and a journal) from the environment."""
    settings, _ = trained
    url = f"sqlite:///{tmp_path / 'live.db'}"  # its own journal: the Prefect flow test decided in the home's
    store = CandleStore(settings.store_dir)
    newest = max(span[1] for s in SYMBOLS if (span := store.time_range(s, "1h", "spot")) is not None)
    with FakeExchange(now_ms=int((newest + HOUR).value // 1_000_000)) as exchange:
        for symbol in SYMBOLS:
            exchange.add_candles(symbol, "1h", store.read(symbol, "1h", "spot"))
        env = {"QT_BINANCE_SPOT_URL": exchange.spot_url, "QT_JOURNAL_URL": url}
        done = qt("live", "--once", "--json", home=settings.home, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["ticks"], summary["model_version"], summary["signals"]) == (1, "1", 3)
    assert summary["replay"] is None and summary["unprotected_positions"] == 0
    journal = Journal(url)
    assert journal.read(lambda s: s.query(db.Signal).count()) == 3  # the live journal, not a replay's


def test_qt_live_replay_dir_plays_files_after_the_stores_newest_candle(
    trained: tuple[Settings, Ensemble], tmp_path: Path, btc_raw: pd.DataFrame
) -> None:
    """``qt live --replay DIR``: data-dump files played after the store's newest candle, through the loop."""
    _, ensemble = trained
    home = load_settings(tmp_path / "home")
    cut = int(UNTIL.value // 1_000_000)
    (tmp_path / "dumps").mkdir()
    btc_raw[btc_raw["open_time"] < cut].to_csv(tmp_path / "history.csv", index=False)
    ingest_files("BTCUSDT", "1h", "spot", [tmp_path / "history.csv"], "files", home)
    later = btc_raw[(btc_raw["open_time"] >= cut) & (btc_raw["open_time"] < cut + 4 * 3_600_000)]
    later.to_csv(tmp_path / "dumps" / "BTCUSDT-1h-2025-05.csv", index=False, header=False)
    example = features_from_store(CandleStore(home.store_dir), ["BTCUSDT"], "1h").tail(2)
    set_alias(home, "1h", "champion", register(home, ensemble, example))
    done = qt("live", "--replay", str(tmp_path / "dumps"), "--json", home=home.home)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["ticks"], summary["signals"], summary["model_version"]) == (4, 4, "1"), summary["errors"]
    replayed = Journal.open(load_settings(Path(summary["replay"])))
    times = replayed.read(lambda s: sorted({x.time for x in s.query(db.Signal)}))
    assert times == list(pd.date_range(UNTIL, periods=4, freq="h").to_pydatetime())
