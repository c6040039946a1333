"""The strategy (policy → sizing → risk → exits) and the backtest with exits, on known numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import BadConfigError
from tasks.features.regime import Regime
from tasks.strategy.engine import Signal, Strategy
from tasks.strategy.exits import Exits
from tasks.strategy.market import MarketWindow
from tasks.strategy.risk import Book, Held, Mode, RiskLimits
from tasks.strategy.simulate import Venue, simulate, summary
from tasks.strategy.sizing import Sizing, payoff_ratio

HOUR = pd.Timedelta(hours=1)
T0 = pd.Timestamp("2025-01-01 10:00", tz="UTC")


def test_sizing_risks_a_fraction_of_equity_at_the_stop_and_kelly_is_opt_in() -> None:
    sizing = Sizing(risk_per_trade=0.01, max_position_fraction=1.0)
    distance = sizing.stop_distance(100.0, 0.01, Regime.RANGING)  # 1.5 ATR of 1 %
    assert distance == pytest.approx(1.5)
    assert sizing.quantity(10_000, 100.0, distance, 0.01) == pytest.approx(100 / 1.5)  # loses 100 at the stop
    assert sizing.quantity(10_000, 100.0, 0.1, 0.01) == pytest.approx(100.0)  # capped at 1 × equity
    assert sizing.rule == "fixed" and sizing.risk_fraction(0.6, 2.0, closed_trades=500) == 0.01  # no Kelly
    kelly = Sizing(rule="kelly")
    assert kelly.risk_fraction(0.6, 2.0, closed_trades=19) == 0.01  # not enough trades for Kelly
    assert kelly.risk_fraction(0.6, 2.0, closed_trades=20) == pytest.approx(min(0.25 * 0.4, 0.02))
    assert kelly.risk_fraction(0.3, 1.0, closed_trades=50) == 0.0  # Kelly sees no edge
    assert payoff_ratio([2.0, -1.0, 1.0, -1.0]) == pytest.approx(1.5)
    with pytest.raises(BadConfigError, match="sizing rule 'martingale': one of fixed, kelly, vol-target"):
        Sizing(rule="martingale")


def test_volatility_targeting_sizes_by_the_windows_return_deviation() -> None:
    """``vol-target``: one bar's deviation of the position is ``vol_target`` of equity; no window, no size."""
    strategy = Strategy(sizing=Sizing(rule="vol-target", vol_target=0.0015), top_k=1)
    book = Book(10_000, 10_000, 10_000)
    window = _window()
    sigma = float(np.diff(np.log(window.closes["SOLUSDT"].to_numpy())).std(ddof=1))
    [entry] = strategy.decide(book, [_signal("SOLUSDT", 0.7)], HOUR, window=window).entries
    assert entry.quantity == pytest.approx(10_000 * 0.0015 / (sigma * 100.0))
    assert entry.quantity < 10_000 * 0.25 / 100  # below the notional cap: the target decided
    assert entry.stop == pytest.approx(98.0)  # the stop still sits at the regime's ATR multiple
    blind = strategy.decide(book, [_signal("SOLUSDT", 0.7)], HOUR)
    assert dict(blind.vetoes)["SOLUSDT"].startswith("size 0")


def test_exits_take_profit_at_r_multiples_break_even_and_trail() -> None:
    exits = Exits()
    legs = exits.take_profits("long", 100.0, 2.0, 1.0, confidence=0.2)
    assert legs == [(102.0, 0.3), (104.0, 0.3), (106.0, 0.4)]
    assert exits.profile(0.05) == "conservative" and exits.profile(0.5) == "aggressive"
    assert exits.moved_stop("long", 100.0, 98.0, 98.0, best=101.0) == 98.0  # +0.5 R: unchanged
    assert exits.moved_stop("long", 100.0, 98.0, 98.0, best=102.0) == 100.0  # +1 R: break-even
    assert exits.moved_stop("long", 100.0, 100.0, 98.0, best=105.0) == 103.0  # +2.5 R: trail 1 R behind
    assert exits.moved_stop("long", 100.0, 103.0, 98.0, best=104.0) == 103.0  # never looser
    assert exits.moved_stop("short", 100.0, 102.0, 102.0, best=97.0) == 100.0  # +1.5 R: break-even
    assert exits.moved_stop("short", 100.0, 100.0, 102.0, best=95.0) == 97.0  # +2.5 R: trailing


def _held(symbol: str) -> Held:
    return Held(symbol, "long", 1.0, 100.0, 98.0, 98.0, 100.0, T0)


def test_risk_modes_and_vetoes_name_their_reason() -> None:
    limits = RiskLimits()
    book = Book(10_000, 10_000, 10_000)
    assert limits.mode(book) is Mode.NORMAL
    book.r_multiples = [1.0, -1.0, -1.0, -1.0]
    assert limits.mode(book) is Mode.DEFENSIVE and limits.risk_scale(Mode.DEFENSIVE) == 0.5
    book.r_multiples = [-1.0] * 6
    assert limits.mode(book) is Mode.CRITICAL
    assert limits.mode(Book(9_400, 10_000, 10_000)) is Mode.HALT  # -6 % on the day
    fresh = Book(10_000, 10_000, 10_000, positions={"ETHUSDT": _held("ETHUSDT")}, last_exit={"BTCUSDT": T0})

    def vetoes(limits: RiskLimits, signals: list[Signal], book: Book = fresh) -> dict[str, str]:
        return dict(Strategy(risk=limits, top_k=5).decide(book, signals, HOUR).vetoes)

    strict = RiskLimits(min_confidence=0.3)
    later = [_signal("BTCUSDT", 0.7, T0 + HOUR), _signal("SOLUSDT", 0.6, T0 + HOUR)]
    assert vetoes(strict, later) == {
        "BTCUSDT": "cooldown: closed 2025-01-01T10:00:00+00:00", "SOLUSDT": "confidence 0.200 below 0.3",
    }  # fmt: skip
    assert vetoes(strict, [_signal("BTCUSDT", 0.7, T0 + 2 * HOUR)]) == {}  # the cooldown is over
    assert vetoes(RiskLimits(max_gross_exposure=0.2), [_signal("SOLUSDT", 0.7)]) == {
        "SOLUSDT": "gross exposure 0.26 above 0.2"  # ETH's 100 + SOL's 2,500 (the notional cap) of 10,000
    }
    assert vetoes(RiskLimits(max_open_positions=1), [_signal("SOLUSDT", 0.7)]) == {
        "SOLUSDT": "NORMAL: 1 positions open (max 1)"
    }
    assert vetoes(limits, [_signal("SOLUSDT", 0.7)], Book(9_000, 10_000, 10_000)) == {
        "SOLUSDT": "HALT: drawdown limit reached"
    }
    no_atr = Signal("SOLUSDT", T0, 0.7, 100.0, 0.0, float(Regime.CHOPPY), edge_scale=0.01, cost=0.0005)
    assert vetoes(limits, [no_atr])["SOLUSDT"].startswith("size 0")


def test_entries_of_one_bar_count_against_the_position_limit() -> None:
    """Two strong calls, room for one more position: the better is taken, the other refused."""
    book = Book(10_000, 10_000, 10_000, positions={"ETHUSDT": _held("ETHUSDT")})
    strategy = Strategy(risk=RiskLimits(max_open_positions=2), top_k=2)
    decided = strategy.decide(book, [_signal("BTCUSDT", 0.7), _signal("SOLUSDT", 0.8)], HOUR)
    assert [e.symbol for e in decided.entries] == ["SOLUSDT"]
    assert decided.vetoes == [("BTCUSDT", "NORMAL: 2 positions open (max 2)")]


def _signal(symbol: str, p_up: float, at: pd.Timestamp = T0) -> Signal:
    return Signal(symbol, at, p_up, 100.0, 0.01, float(Regime.CHOPPY), edge_scale=0.01, cost=0.0005)


def test_decide_enters_the_best_edges_with_stop_and_targets_and_closes_on_a_turn() -> None:
    strategy = Strategy(top_k=1)
    book = Book(10_000, 10_000, 10_000, positions={"ETHUSDT": _held("ETHUSDT")})
    decided = strategy.decide(
        book, [_signal("BTCUSDT", 0.6), _signal("SOLUSDT", 0.7), _signal("ETHUSDT", 0.2)], HOUR
    )
    assert decided.closes == {"ETHUSDT": "signal turned"}
    [entry] = decided.entries  # top_k = 1: SOL's edge is larger
    assert (entry.symbol, entry.side) == ("SOLUSDT", "long")
    assert entry.stop == pytest.approx(98.0)  # 2 ATR (CHOPPY) below 100
    assert [p for p, _ in entry.take_profits] == pytest.approx(
        [103.0, 106.0, 110.0]
    )  # confidence 0.4: aggressive
    assert entry.quantity == pytest.approx(min(100 / 2.0, 10_000 * 0.25 / 100))


def _frame(btc_raw: pd.DataFrame, p_up: np.ndarray) -> pd.DataFrame:
    rows = btc_raw.iloc[3000 : 3000 + len(p_up)].reset_index(drop=True)
    frame = rows[["open", "high", "low", "close"]].astype(float).copy()
    frame["symbol"] = "BTCUSDT"
    frame["open_time"] = pd.to_datetime(rows["open_time"], unit="ms", utc=True)
    frame["p_up"] = p_up
    frame["atr_pct"] = 0.01
    frame["regime"] = float(Regime.CHOPPY)
    return frame


def test_simulation_accounts_every_fill_and_the_equity_adds_up(btc_raw: pd.DataFrame) -> None:
    rng = np.random.default_rng(7)
    frame = _frame(btc_raw, np.clip(0.5 + rng.normal(0, 0.08, 500), 0.01, 0.99))
    venue = Venue(fee_bps=4, slippage_bps=1, funding_bps_8h=1, cash=10_000)
    result = simulate(frame, Strategy(), HOUR, venue, {"BTCUSDT": 0.006}, cost=0.0005)
    assert len(result.trades) >= 5
    for trade in result.trades:
        assert trade.exits and trade.exits[-1] in {"stop", "close", "tp1", "tp2", "tp3"}
        assert trade.risk > 0
    last = frame.iloc[-1]
    unrealised = sum(h.unrealised(float(last["close"])) for h in result.open_positions.values())
    open_fees = result.fees - sum(t.fees for t in result.trades)
    booked = sum(t.net for t in result.trades) - open_fees + unrealised
    assert result.equity.iloc[-1] == pytest.approx(10_000 + booked - _open_funding(result, venue, frame))
    figures = summary(result, HOUR)
    assert figures["trades"] == len(result.trades) and figures["fees_paid"] > 0
    assert result.vetoes, "the stretch should have refused entries"
    reasons = {reason.split(":")[0].split(" ")[0] for _, _, reason in result.vetoes}
    assert reasons <= {"cooldown", "confidence", "NORMAL", "DEFENSIVE", "CRITICAL", "HALT", "gross", "size",
                       "correlation-weighted", "symbol"}  # fmt: skip


def _open_funding(result, venue, frame) -> float:  # type: ignore[no-untyped-def]
    """Funding the open positions paid (already in equity, not yet in a trade)."""
    return result.funding - sum(-t.funding for t in result.trades)


def test_a_stop_fills_at_the_stop_and_the_loss_is_one_r_plus_costs() -> None:
    """Flat candles at 100, one long call, then a candle down to 97: the 98 stop fills, R = -1 - fees."""
    times = pd.date_range(T0, periods=4, freq="h")
    frame = pd.DataFrame({
        "symbol": "BTCUSDT", "open_time": times, "open": [100.0, 100.0, 100.0, 97.5],
        "high": [100.5, 100.5, 100.2, 98.0], "low": [99.5, 99.5, 97.0, 97.0],
        "close": [100.0, 100.0, 97.5, 97.5],
        "p_up": [0.9, 0.5, 0.5, 0.5], "atr_pct": 0.01, "regime": float(Regime.CHOPPY),
    })  # fmt: skip
    venue = Venue(fee_bps=10, slippage_bps=0, cash=10_000)
    result = simulate(frame, Strategy(), HOUR, venue, {"BTCUSDT": 0.01}, cost=0.0)
    [trade] = result.trades
    assert trade.exits == ["stop"] and trade.entry_price == 100.0 and trade.exit_time == times[2]
    fees = 0.001 * trade.quantity * (100.0 + 98.0)
    assert trade.fees == pytest.approx(fees)
    assert trade.r_multiple == pytest.approx(-1.0 - fees / (2.0 * trade.quantity))
    assert result.equity.iloc[-1] == pytest.approx(10_000 - 2.0 * trade.quantity - fees)


def _window(volumes: dict[str, float] | None = None) -> MarketWindow:
    """97 hourly closes: ETH moves as BTC does, XRP against it, SOL on its own."""
    rng = np.random.default_rng(3)
    times = pd.date_range(T0 - 96 * HOUR, T0, freq="h")
    btc, sol = rng.normal(0, 0.01, len(times)).cumsum(), rng.normal(0, 0.01, len(times)).cumsum()
    closes = pd.DataFrame({"BTCUSDT": btc, "ETHUSDT": btc, "SOLUSDT": sol, "XRPUSDT": -btc}, index=times)
    closes = 100 * np.exp(closes)
    volume = pd.DataFrame({s: (volumes or {}).get(s, 1e6) for s in closes.columns}, index=times)
    return MarketWindow(closes, volume)


def _long_eth() -> Book:
    eth = Held("ETHUSDT", "long", 25.0, 100.0, 98.0, 98.0, 100.0, T0)  # 2,500 of 10,000 equity
    return Book(10_000, 10_000, 10_000, positions={"ETHUSDT": eth}, prices={"ETHUSDT": 100.0})


def test_correlation_weighted_exposure_counts_coins_that_move_together() -> None:
    strategy = Strategy(risk=RiskLimits(max_correlated_exposure=0.4), top_k=4)
    decided = strategy.decide(_long_eth(), [_signal("BTCUSDT", 0.7)], HOUR, window=_window())
    assert decided.vetoes == [("BTCUSDT", "correlation-weighted exposure 0.50 above 0.4")]  # a second ETH
    hedge = strategy.decide(_long_eth(), [_signal("XRPUSDT", 0.7)], HOUR, window=_window())
    assert [e.symbol for e in hedge.entries] == ["XRPUSDT"]  # moves against ETH: less risk, not more
    # a short of what moves with ETH offsets it
    short = strategy.decide(_long_eth(), [_signal("BTCUSDT", 0.3)], HOUR, window=_window())
    assert [(e.symbol, e.side) for e in short.entries] == [("BTCUSDT", "short")]
    # without a window the correlations are unknown and taken as 1: the cautious answer
    blind = strategy.decide(_long_eth(), [_signal("SOLUSDT", 0.7)], HOUR)
    assert dict(blind.vetoes)["SOLUSDT"].startswith("correlation-weighted exposure")


def test_ranking_prefers_what_diversifies_is_liquid_and_has_a_record() -> None:
    strategy = Strategy(top_k=1)
    calls = [_signal("BTCUSDT", 0.7), _signal("SOLUSDT", 0.7)]  # the same edge
    [entry] = strategy.decide(_long_eth(), calls, HOUR, window=_window()).entries
    assert entry.symbol == "SOLUSDT"  # BTC moves with the ETH already held
    thin = _window({"SOLUSDT": 1e4})  # SOL trades 1 % of the others' volume
    [entry] = strategy.decide(_long_eth(), calls, HOUR, window=thin).entries
    assert entry.symbol == "BTCUSDT"
    flat = Book(10_000, 10_000, 10_000, symbol_r={"SOLUSDT": [-1.0] * 5, "BTCUSDT": [1.0] * 5})
    [entry] = strategy.decide(flat, [_signal("SOLUSDT", 0.72), _signal("BTCUSDT", 0.7)], HOUR).entries
    assert entry.symbol == "BTCUSDT"  # a better record beats a slightly larger edge


def _wide(symbol: str, p_up: float, at: pd.Timestamp = T0) -> Signal:
    """A signal whose stop sits far enough (5 % ATR) that the risk, not the notional cap, sizes it."""
    return Signal(symbol, at, p_up, 100.0, 0.05, float(Regime.CHOPPY), edge_scale=0.01, cost=0.0005)


def test_symbol_manager_disables_a_losing_symbol_for_its_cool_off_and_halves_a_poor_ones_risk() -> None:
    """Four losses in a row in BTC: off for 48 bars from its last exit, back after; poor record: half risk."""
    limits = RiskLimits(
        symbol_disable_after=4, symbol_cooloff_bars=48, poor_symbol_scale=0.5, cooldown_bars=0
    )
    strategy = Strategy(risk=limits, top_k=5, track_after=5)
    losing = Book(10_000, 10_000, 10_000, last_exit={"BTCUSDT": T0}, symbol_r={"BTCUSDT": [1.0] + [-1.0] * 4})
    soon = strategy.decide(losing, [_wide("BTCUSDT", 0.7, T0 + 47 * HOUR)], HOUR)
    assert soon.entries == [] and soon.vetoes == [
        ("BTCUSDT", "symbol disabled: 4 losing trades in a row; cool-off until 2025-01-03T10:00:00+00:00")
    ]
    [back] = strategy.decide(losing, [_wide("BTCUSDT", 0.7, T0 + 48 * HOUR)], HOUR).entries
    # five trades, average R negative: the symbol is a poor performer and takes half the risk
    fresh = strategy.decide(Book(10_000, 10_000, 10_000), [_wide("BTCUSDT", 0.7, T0 + 48 * HOUR)], HOUR)
    assert back.quantity == pytest.approx(fresh.entries[0].quantity * 0.5)
    won_last = Book(
        10_000, 10_000, 10_000, last_exit={"BTCUSDT": T0}, symbol_r={"BTCUSDT": [-1.0] * 4 + [2.0]}
    )
    assert strategy.decide(won_last, [_wide("BTCUSDT", 0.7, T0 + HOUR)], HOUR).vetoes == []  # streak reset
    off = Strategy(risk=RiskLimits(symbol_disable_after=0, cooldown_bars=0), top_k=5)
    assert off.decide(losing, [_wide("BTCUSDT", 0.7, T0 + HOUR)], HOUR).vetoes == []  # 0: never disabled


def test_the_supervisors_floor_mode_holds_the_book_at_defensive_or_above() -> None:
    limits = RiskLimits()
    floored = Book(10_000, 10_000, 10_000, floor_mode=Mode.DEFENSIVE)
    assert limits.mode(floored) is Mode.DEFENSIVE
    floored.r_multiples = [-1.0] * 6
    assert limits.mode(floored) is Mode.CRITICAL  # the floor raises the mode, never lowers it
    strategy = Strategy(top_k=5)
    signals = [_wide("BTCUSDT", 0.7)]
    normal = strategy.decide(Book(10_000, 10_000, 10_000), signals, HOUR).entries[0]
    defensive = strategy.decide(
        Book(10_000, 10_000, 10_000, floor_mode=Mode.DEFENSIVE), signals, HOUR
    ).entries[0]
    assert defensive.quantity == pytest.approx(normal.quantity * limits.defensive_risk_scale)
