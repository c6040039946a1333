"""Backtest benchmark: 1,000,000 bars (10 symbols × 100,000) from P(up) to metrics, with fees.

Two parts, synthetic seeded data:

1. the vectorised evaluation backtest (positions, no exits): the policy (P(up) → positions)
   and the portfolio backtest (costs, equity, trades, metrics), and the plain per-bar Python
   loop the tests use as the independent reference (tests/test_backtest.py);
2. the backtest with exits (:func:`tasks.strategy.simulate.simulate`: policy, ranking, risk
   engine, ATR sizing, a stop and three take-profit legs, break-even and trailing stops, long
   and short, one account) beside vectorbt's ``Portfolio.from_signals`` on the same OHLC bars
   and P(up): long and short, the same fees and slippage, a stop-loss and a take-profit as
   exits, cash shared by the 10 symbols, fills at the next open. Both timed parts end with
   the trade list and the statistics (Sharpe, return, drawdown); each is run once to compile
   (numba) before the timed runs. vectorbt is a bench extra (``pip install -e '.[bench]'``);
   without it the ratio is not reported.

Prints tables and writes bench/results/backtest.json.

    .venv/bin/python bench/backtest.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tasks.backtest import Costs, Policy, backtest, policy_positions  # noqa: E402
from tests.test_backtest import reference_loop  # noqa: E402

SYMBOLS, BARS = 10, 100_000
H = pd.Timedelta(hours=1)
FEE_BPS, SLIPPAGE_BPS = 5.0, 1.0
ABS_RETURN = {f"S{k:02d}USDT": 0.008 for k in range(SYMBOLS)}


def data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    frames = []
    for k in range(SYMBOLS):
        frames.append(
            pd.DataFrame(
                {
                    "symbol": f"S{k:02d}USDT",
                    "open_time": pd.date_range("2010-01-01", periods=BARS, freq="h", tz="UTC"),
                    "target_log_return": rng.normal(0, 0.01, BARS),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    # A slightly informative P(up), so the policy trades, holds and flips.
    signal = np.sign(frame["target_log_return"].to_numpy()) * 0.005
    p_up = pd.Series(np.clip(0.5 + signal + rng.normal(0, 0.1, len(frame)), 0.01, 0.99), index=frame.index)
    return frame, p_up


def ohlc(frame: pd.DataFrame, p_up: pd.Series) -> pd.DataFrame:
    """The bars of part 2: a random walk per symbol from the returns, with P(up), ATR and regime."""
    rng = np.random.default_rng(1)
    out = frame[["symbol", "open_time"]].copy()
    log_close = 4.6 + frame.groupby("symbol")["target_log_return"].cumsum()
    close = np.exp(log_close.to_numpy())
    previous = np.exp((log_close - frame["target_log_return"]).to_numpy())
    wick = np.abs(rng.normal(0, 0.004, (2, len(frame))))
    out["open"], out["close"] = previous, close
    out["high"] = np.maximum(previous, close) * (1 + wick[0])
    out["low"] = np.minimum(previous, close) * (1 - wick[1])
    # A P(up) at t about the move of t + 1, informative enough that neither engine goes bust.
    ahead = frame.groupby("symbol")["target_log_return"].shift(-1).fillna(0.0).to_numpy()
    out["p_up"] = np.clip(0.5 + np.sign(ahead) * 0.004 + rng.normal(0, 0.05, len(frame)), 0.01, 0.99)
    out["atr_pct"], out["regime"] = 0.01, 2.0
    return out


def ours_with_exits(bars: pd.DataFrame) -> dict[str, float]:
    """Our backtest with exits, its trade list and statistics."""
    from tasks.strategy.engine import Strategy
    from tasks.strategy.risk import RiskLimits
    from tasks.strategy.simulate import Venue, simulate, summary

    venue = Venue(fee_bps=FEE_BPS, slippage_bps=SLIPPAGE_BPS, cash=100_000.0)
    # the risk engine's limits opened wide, so both engines trade the same signals throughout
    limits = RiskLimits(
        max_open_positions=SYMBOLS, max_gross_exposure=SYMBOLS, max_correlated_exposure=SYMBOLS,
        daily_drawdown=1.0, halt_drawdown=1.0,
    )  # fmt: skip
    strategy = Strategy(risk=limits, top_k=SYMBOLS)
    result = simulate(bars, strategy, H, venue, ABS_RETURN, cost=(FEE_BPS + SLIPPAGE_BPS) / 1e4)
    figures = summary(result, H)
    figures["trade_rows"] = float(len(result.trades))
    return figures


def vectorbt_with_exits(bars: pd.DataFrame) -> dict[str, float]:
    """vectorbt's from_signals on the same bars: the policy's events as signals, SL/TP at 2 and 6 ATR."""
    import vectorbt as vbt

    wide = {
        c: bars.pivot(index="open_time", columns="symbol", values=c)
        for c in ("open", "high", "low", "close", "p_up")
    }
    cost = (FEE_BPS + SLIPPAGE_BPS) / 1e4
    edge = (2 * wide["p_up"] - 1) * next(iter(ABS_RETURN.values()))
    # decided at the close, filled at the next open (as ours): the signals move one bar on
    enter_long, enter_short = (
        (edge > 2 * cost).shift(1, fill_value=False),
        (edge < -2 * cost).shift(1, fill_value=False),
    )
    portfolio = vbt.Portfolio.from_signals(
        wide["close"], entries=enter_long, short_entries=enter_short, upon_opposite_entry="close",
        price=wide["open"], open=wide["open"], high=wide["high"], low=wide["low"],
        sl_stop=0.02, tp_stop=0.06, fees=FEE_BPS / 1e4, slippage=SLIPPAGE_BPS / 1e4,
        size=0.25, size_type="percent", init_cash=100_000.0, cash_sharing=True, group_by=True, freq="1h",
    )  # fmt: skip
    trades = portfolio.trades.records_readable
    return {
        "sharpe": float(portfolio.sharpe_ratio()), "total_return": float(portfolio.total_return()),
        "max_drawdown": float(portfolio.max_drawdown()), "trades": float(len(trades)),
        "trade_rows": float(len(trades)),
    }  # fmt: skip


def timed(fn, repeats: int = 5) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    out = fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def main() -> None:
    frame, p_up = data()
    costs, policy = Costs(), Policy()
    abs_return = {s: 0.008 for s in frame["symbol"].unique()}
    t_policy, pos = timed(lambda: policy_positions(frame, p_up, policy, costs, abs_return))
    t_backtest, result = timed(lambda: backtest(frame, pos, costs, H))  # type: ignore[arg-type]
    began = time.perf_counter()
    reference = reference_loop(frame, p_up, policy, costs, abs_return)
    t_loop = time.perf_counter() - began
    ours = result.equity.to_numpy()  # type: ignore[attr-defined]
    diff = float(np.max(np.abs(ours / reference.to_numpy() - 1)))
    final = float(ours[-1])
    rows = [
        ("policy: P(up) → positions", t_policy),
        ("backtest: costs, equity, trades, metrics", t_backtest),
        ("together", t_policy + t_backtest),
        ("plain per-bar Python loop (reference)", t_loop),
    ]
    table = Table(title=f"Backtest of {SYMBOLS * BARS:,} bars with fees ({os.cpu_count()} cores)")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.3f}")
    Console().print(table)
    exits = with_exits(frame, p_up)
    trades = result.metrics["trades"]  # type: ignore[attr-defined]
    note = f"max |equity / reference - 1| = {diff:.2e}; trades {trades:.0f}; final equity {final:.3g}"
    print(note, file=sys.stderr)
    out = ROOT / "bench" / "results" / "backtest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "bars": SYMBOLS * BARS,
                "seconds": dict(rows),
                "max_rel_equity_diff": diff,
                "with_exits": exits,
            },
            indent=2,
        )
    )
    print(f"wrote {out}", file=sys.stderr)


def with_exits(frame: pd.DataFrame, p_up: pd.Series) -> dict[str, object]:
    """Part 2: our backtest with exits beside vectorbt's, timed in this run."""
    bars = ohlc(frame, p_up)
    t_ours, ours = timed(lambda: ours_with_exits(bars), repeats=3)
    out: dict[str, object] = {"ours_seconds": t_ours, "ours": ours}
    table = Table(title=f"Backtest with exits, {SYMBOLS} × {BARS:,} bars, long and short, fees and slippage")
    for name in ("engine", "seconds", "trades", "Sharpe", "total return", "max drawdown"):
        table.add_column(name, justify="left" if name == "engine" else "right")
    rows = [("ours (strategy, 3 take-profit legs, trailing, risk engine)", t_ours, ours)]
    try:
        import vectorbt  # noqa: F401
    except ImportError:
        print("vectorbt is not installed (pip install -e '.[bench]'): no ratio", file=sys.stderr)
    else:
        t_vbt, theirs = timed(lambda: vectorbt_with_exits(bars), repeats=3)
        out |= {"vectorbt_seconds": t_vbt, "vectorbt": theirs, "ratio": t_ours / t_vbt}
        rows.append(("vectorbt from_signals (SL + TP)", t_vbt, theirs))
    for name, seconds, figures in rows:
        table.add_row(name, f"{seconds:.3f}", f"{figures['trades']:.0f}", f"{figures['sharpe']:.2f}",
                      f"{figures['total_return']:.1%}", f"{figures['max_drawdown']:.1%}")  # fmt: skip
    Console().print(table)
    if "ratio" in out:
        print(f"ours / vectorbt = {out['ratio']:.2f}×", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
