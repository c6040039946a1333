"""Sizing and strategy selection judged by evidence: every sizing rule × every way to pick trades.

On the 10 shared pairs (1h, the stacked xgb + lgbm P(up) of ``bench/strategy.py``'s
walk-forward, read from its OOF cache) and the market's costs, three ways to choose trades:

* ``model``: the default policy (h1 cost-aware) on the stacked P(up);
* ``meta-q``: the original's meta-strategy controller, Q-learning over the regime (ε 0.10,
  α 0.20) choosing, whenever a symbol is flat and some strategy wants in, among the model's
  policy and four rule strategies (trend-following, mean-reversion, breakout, range); the
  chosen strategy's position is followed until it exits;
* ``meta-thompson``: the same choice by Thompson sampling (:class:`ThompsonSelector`);

each sized by four rules (a trade keeps its entry size):

* ``fixed``: one unit (the fixed fraction of equity per position);
* ``vol-target``: the unit × the symbol's typical 24 h volatility / its current one (≤ 1);
* ``kelly``: after 20 closed trades, fractional Kelly from the calibrated P(win) and the
  measured payoff ratio of the trades closed before the entry: ¼ Kelly, one unit per
  1.25 % of equity it stakes, at most 1.5 units (0 when Kelly sees no edge);
* ``q-sizer``: the original's Q-learning sizing agent (300 states, 25 actions, its
  reward; leverage only on futures), learning online from the trades closed before each entry.

Every learning agent sees only trades that closed before the bar it decides on
(:mod:`tasks.strategy.agents`), is seeded, and starts learning on the first OOF fold;
the reported rows are ``bench/strategy.py``'s (2022-06 → 2025-06). Per row: net Sharpe,
Sortino, max drawdown, Calmar, turnover, trades, the longest time to recover a high, and a
block bootstrap (by day, 10-day blocks, 2,000 resamples) 95 % interval of the Sharpe
difference against ``fixed`` sizing of the same trades. Prints a table, writes
bench/results/sizing.json, logs one MLflow run per row (experiment
``quantum-trader-sizing-research`` under ``--home``).

    .venv/bin/python bench/strategy.py      # first: builds the OOF cache (about 10 min)
    .venv/bin/python bench/sizing.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import strategy  # noqa: E402
from tasks.backtest import Costs, baseline_positions  # noqa: E402
from tasks.features.regime import Regime  # noqa: E402
from tasks.models.stacker import PREFIX  # noqa: E402
from tasks.strategy.agents import (  # noqa: E402
    Outcome,
    QSelector,
    QSizer,
    ThompsonSelector,
    regime_index,
    sizing_state,
)
from tasks.strategy.research import backtest_entries, candidates, positions  # noqa: E402

STEP = pd.Timedelta(hours=1)
NS = STEP.value
ARMS = ("model", "trend", "mean-reversion", "breakout", "range")
SIZERS = ("fixed", "vol-target", "kelly", "q-sizer")
PICKERS = ("model", "meta-q", "meta-thompson")
EXPERIMENT = "quantum-trader-sizing-research"
KELLY_FRACTION, KELLY_UNIT, KELLY_CAP, KELLY_AFTER = 0.25, 0.0125, 1.5, 20  # ¼ Kelly; 1.25 % = one unit
console = Console(stderr=True)


# -- the rule strategies (causal: each reads its own row's features) --------------------------------
def hysteresis(enter_long: np.ndarray, exit_long: np.ndarray, enter_short: np.ndarray,
               exit_short: np.ndarray) -> np.ndarray:  # fmt: skip
    """A position path that enters on a signal and holds until its exit signal."""
    out, side = np.zeros(len(enter_long)), 0.0
    for i in range(len(out)):
        if (side > 0 and exit_long[i]) or (side < 0 and exit_short[i]):
            side = 0.0
        if side == 0:
            side = 1.0 if enter_long[i] else (-1.0 if enter_short[i] else 0.0)
        out[i] = side
    return out


def rule_paths(rows: pd.DataFrame, long_only: bool) -> dict[str, pd.Series]:
    """Trend-following, mean-reversion, breakout and range positions for every row."""
    out = {name: pd.Series(0.0, index=rows.index) for name in ARMS[1:]}
    for _, g in rows.sort_values("open_time").groupby("symbol"):
        spread, above = g["ema_10_50_spread"].to_numpy(), g["ema_50_dist"].to_numpy()
        band, near = g["bb_position"].to_numpy(), g["ema_10_dist"].to_numpy()
        regime, up = g["regime"].to_numpy(), g["log_ret_1"].to_numpy() > 0
        breakout, ranging = regime == Regime.BREAKOUT, regime == Regime.RANGING
        paths = {
            "trend": hysteresis(
                (spread > 0) & (above > 0), spread <= 0, (spread < 0) & (above < 0), spread >= 0
            ),
            "mean-reversion": hysteresis(band < 0, band > 0.5, band > 1, band < 0.5),
            "breakout": hysteresis(breakout & up, near < 0, breakout & ~up, near > 0),
            "range": hysteresis(
                ranging & (band < 0.2),
                (band > 0.8) | ~ranging,
                ranging & (band > 0.8),
                (band < 0.2) | ~ranging,
            ),
        }
        for name, path in paths.items():
            out[name].loc[g.index] = np.maximum(path, 0.0) if long_only else path
    return out


# -- trades and their outcomes -------------------------------------------------------------------
def simulate(
    rows: pd.DataFrame, paths: dict[str, pd.Series], picker_kind: str, sizer_kind: str, costs: Costs,
    typical_vol: dict[str, float], seed: int,
) -> tuple[pd.Series, dict[str, Any]]:  # fmt: skip
    """The sized position of every row, walking the bars in time order with online learners.

    Returns (position per row, figures: trades, arm shares, agent updates).
    """
    order = rows.sort_values(["open_time", "symbol"], kind="stable").index.to_numpy()
    t_ns = rows["open_time"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    symbol = rows["symbol"].astype(str).to_numpy()
    p_up = rows["_p"].to_numpy()
    ret = np.expm1(rows["target_log_return"].to_numpy())  # a unit long position's return per row
    atr = rows["atr_pct"].to_numpy()
    regime, ratio = rows["regime"].to_numpy(), rows["atr_ratio_50"].to_numpy()
    vol = rows["realized_vol_24"].to_numpy()
    arm_paths = {k: v.to_numpy() for k, v in paths.items()}
    per_side = float(np.mean(np.asarray(costs.per_side(None))))
    selector: QSelector | ThompsonSelector | None = None
    if picker_kind == "meta-q":
        selector = QSelector(ARMS, seed=seed)
    elif picker_kind == "meta-thompson":
        selector = ThompsonSelector(ARMS, seed=seed)
    sizer = (
        QSizer(seed=seed, max_leverage=1.0 if costs.long_only else 5.0) if sizer_kind == "q-sizer" else None
    )
    out = np.zeros(len(rows))
    open_trade: dict[str, dict[str, Any]] = {}  # symbol → its trade while held
    closed: list[Outcome] = []
    closed_r: list[float] = []
    arms_used: dict[str, int] = {}
    fed = {"selector": 0, "sizer": 0}  # outcomes already handed to each agent
    n_symbols = max(1, len(set(symbol)))
    for i in order:
        s, now = symbol[i], int(t_ns[i]) + NS  # decisions at the bar's close
        trade = open_trade.get(s)
        if trade is not None:
            want = arm_paths[trade["arm"]][i]
            if want != trade["side"]:  # the followed strategy exits (or flips): the trade closes
                size = trade["size"]  # the reward is the sized position's; R is per unit (its stop: 2 ATR)
                outcome = Outcome(
                    trade["key"], int(t_ns[i]) + NS, trade["pnl"] * size * 100, trade["bars"],
                    max(0.0, -trade["worst"]) * size * 100, trade["pnl"] / max(2 * trade["atr"], 1e-9),
                    sizing_state(regime[i], ratio[i], abs(2 * p_up[i] - 1), len(open_trade) / n_symbols,
                                 float(np.mean(closed_r[-10:])) if closed_r else np.nan),
                )  # fmt: skip
                closed.append(outcome)
                closed_r.append(outcome.r_multiple)
                del open_trade[s]
                trade = None
        if trade is None:
            wanting = [a for a in ARMS if arm_paths[a][i] != 0]
            if picker_kind == "model":
                wanting = [a for a in wanting if a == "model"]
            if wanting:
                key = f"{s}@{t_ns[i]}"
                if selector is not None:  # it picks the strategy to run; flat if that one wants nothing
                    selector.learn(closed[fed["selector"] :], now)  # the outcomes new since its last call
                    fed["selector"] = len(closed)
                    arm = selector.choose(key, regime_index(regime[i], ratio[i]), now)
                else:
                    arm = "model"
                side = arm_paths[arm][i]
                if side == 0:
                    if selector is not None:
                        selector.discard(key)
                    continue
                if sizer is not None:
                    sizer.learn(closed[fed["sizer"] :], now)
                    fed["sizer"] = len(closed)
                size = _size(sizer_kind, sizer, key, i, now, p_up, side, vol, typical_vol.get(s, np.nan),
                             regime, ratio, len(open_trade) / n_symbols, closed, closed_r)  # fmt: skip
                if size > 0:
                    trade = {
                        "key": key, "arm": arm, "side": side, "size": size, "pnl": -2 * per_side, "bars": 0,
                        "worst": 0.0, "atr": atr[i] if np.isfinite(atr[i]) else 0.01,
                    }  # fmt: skip
                    open_trade[s] = trade
                    arms_used[arm] = arms_used.get(arm, 0) + 1
                elif selector is not None:  # Kelly sees no edge: no trade for the selector either
                    selector.discard(key)
        if trade is not None:
            out[i] = trade["side"] * trade["size"]
            if np.isfinite(ret[i]):
                trade["pnl"] += trade["side"] * ret[i]
            trade["bars"] += 1
            trade["worst"] = min(trade["worst"], trade["pnl"])
    figures = {"arms": arms_used, "closed_trades": len(closed)}
    if sizer is not None:
        figures["q_updates"] = sizer.updates
    return pd.Series(out, index=rows.index), figures


def _size(kind: str, sizer: QSizer | None, key: str, i: int, now: int, p_up: np.ndarray, side: float,
          vol: np.ndarray, typical: float, regime: np.ndarray, ratio: np.ndarray, load: float,
          closed: list[Outcome], closed_r: list[float]) -> float:  # fmt: skip
    """The entry size of a trade under sizing rule ``kind`` (units of the fixed fraction)."""
    if kind == "fixed":
        return 1.0
    if kind == "vol-target":
        v = vol[i]
        return (
            float(np.clip(typical / v, 0.0, 1.0))
            if np.isfinite(v) and v > 0 and np.isfinite(typical)
            else 0.0
        )
    p_win = p_up[i] if side > 0 else 1 - p_up[i]
    if kind == "kelly":
        known = [o.r_multiple for o in closed if o.closed_at < now]
        wins, losses = [r for r in known if r > 0], [-r for r in known if r < 0]
        if len(known) < KELLY_AFTER or not wins or not losses:
            return 1.0
        payoff = (sum(wins) / len(wins)) / (sum(losses) / len(losses))
        kelly = p_win - (1 - p_win) / payoff
        return float(np.clip(KELLY_FRACTION * kelly / KELLY_UNIT, 0.0, KELLY_CAP))
    assert sizer is not None  # it has learned from every trade closed before ``now``
    recent = float(np.mean(closed_r[-10:])) if closed_r else np.nan
    state = sizing_state(regime[i], ratio[i], abs(2 * p_up[i] - 1), load, recent)
    multiplier, leverage = sizer.act(key, state, now)
    return multiplier * leverage


# -- judging ----------------------------------------------------------------------------------------
def figures(net: pd.Series, bars_per_year: float) -> dict[str, float]:
    """Sharpe, Sortino, max drawdown, Calmar, the longest time to recover a high (days)."""
    r = net.to_numpy()
    sd = r.std(ddof=1) if len(r) > 1 else 0.0
    downside = np.sqrt(np.mean(np.minimum(r, 0) ** 2)) if len(r) else 0.0
    equity = np.cumprod(1 + r)
    peak = np.maximum.accumulate(equity)
    drawdown = equity / peak - 1
    years = len(r) / bars_per_year
    annual = equity[-1] ** (1 / years) - 1 if years > 0 and equity[-1] > 0 else -1.0
    under, longest = 0, 0
    for d in drawdown:
        under = under + 1 if d < 0 else 0
        longest = max(longest, under)
    return {
        "sharpe": float(r.mean() / sd * np.sqrt(bars_per_year)) if sd > 0 else 0.0,
        "sortino": float(r.mean() / downside * np.sqrt(bars_per_year)) if downside > 0 else 0.0,
        "max_drawdown": float(drawdown.min()) if len(r) else 0.0,
        "annual_return": float(annual),
        "calmar": float(annual / -drawdown.min()) if len(r) and drawdown.min() < 0 else 0.0,
        "days_to_recover": float(longest * (STEP / pd.Timedelta(days=1))),
    }


def bootstrap_difference(
    a: pd.Series, b: pd.Series, seed: int, block: int = 10, n: int = 2000
) -> list[float]:
    """95 % interval of Sharpe(a) − Sharpe(b) by a moving-block bootstrap of days (the same days for both)."""
    days_a = a.groupby(pd.DatetimeIndex(a.index).floor("D")).sum()
    days_b = b.groupby(pd.DatetimeIndex(b.index).floor("D")).sum().reindex(days_a.index, fill_value=0.0)
    x, y = days_a.to_numpy(), days_b.to_numpy()
    rng = np.random.default_rng(seed)
    starts = np.arange(len(x) - block + 1)
    diffs = np.empty(n)
    for k in range(n):
        pick = rng.choice(starts, size=-(-len(x) // block))
        idx = (pick[:, None] + np.arange(block)).ravel()[: len(x)]
        xs, ys = x[idx], y[idx]
        sa = xs.mean() / xs.std(ddof=1) if xs.std(ddof=1) > 0 else 0.0
        sb = ys.mean() / ys.std(ddof=1) if ys.std(ddof=1) > 0 else 0.0
        diffs[k] = (sa - sb) * np.sqrt(365.25)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def research(base: pd.DataFrame, oof: pd.DataFrame, costs: Costs, seed: int) -> dict[str, Any]:
    """Every picker × sizing rule on one market, beside buy-and-hold and momentum."""
    bars_per_year = pd.Timedelta(days=365.25) / STEP
    stacked = oof[oof[f"{PREFIX}stacker"].notna()]
    fold_ids = sorted(int(f) for f in stacked["fold"].unique())
    starts = [stacked.loc[stacked["fold"] == f, "open_time"].min() for f in fold_ids]
    end = stacked["open_time"].max() + STEP
    rows = base[(base["open_time"] >= starts[0]) & (base["open_time"] < end)].reset_index(drop=True)
    keyed = stacked.set_index(["symbol", "open_time"])[f"{PREFIX}stacker"]
    p = keyed.reindex(pd.MultiIndex.from_frame(rows[["symbol", "open_time"]])).fillna(0.5).to_numpy()
    rows = rows.assign(_p=p)
    typical_vol = {
        str(k): float(v)
        for k, v in base[base["open_time"] < starts[0]].groupby("symbol")["realized_vol_24"].median().items()
    }
    abs_return = {str(k): float(v) for k, v in oof.groupby("symbol")["abs_return"].first().items()}
    default = candidates([1])[0]
    paths = {"model": positions(rows, rows["_p"], default, costs, abs_return, typical_vol)}
    paths.update(rule_paths(rows, costs.long_only))
    reported = rows["open_time"] >= starts[1]
    out: dict[str, Any] = {"market": costs.market, "reported_start": str(starts[1]), "reported_end": str(end)}
    nets, table = {}, []
    for picker in PICKERS:
        for sizer in SIZERS:
            began = time.perf_counter()
            position, extra = simulate(rows, paths, picker, sizer, costs, typical_vol, seed)
            bt = backtest_entries(rows[reported], position[reported], costs, STEP)
            years = len(bt.net) / bars_per_year
            key = f"{picker} × {sizer}"
            nets[key] = bt.net
            row = {"row": key, "picker": picker, "sizing": sizer, **figures(bt.net, bars_per_year)}
            row.update(
                turnover_per_year=bt.metrics["turnover"] / years, trades=bt.metrics["trades"],
                exposure=bt.metrics["exposure"], seconds=time.perf_counter() - began, **extra,
            )  # fmt: skip
            table.append(row)
            console.print(f"{costs.market} {key}: Sharpe {row['sharpe']:.2f}", highlight=False)
    for row in table:
        fixed, sized = nets[f"{row['picker']} × fixed"], nets[str(row["row"])]
        row["sharpe_diff_vs_fixed_ci95"] = (
            [0.0, 0.0] if row["sizing"] == "fixed" else bootstrap_difference(sized, fixed, seed)
        )
    for name, pos in baseline_positions(rows[reported], STEP, costs.long_only).items():
        if name == "always_flat":
            continue
        bt = backtest_entries(rows[reported], pos, costs, STEP)
        years = len(bt.net) / bars_per_year
        table.append({"row": name, "picker": name, "sizing": "-", **figures(bt.net, bars_per_year),
                      "turnover_per_year": bt.metrics["turnover"] / years, "trades": bt.metrics["trades"],
                      "exposure": bt.metrics["exposure"]})  # fmt: skip
    out["rows"] = table
    return out


def show(result: dict[str, Any]) -> None:
    table = Table(title=f"Sizing × trade picking, {result['market']} ({result['reported_start'][:10]} → "
                        f"{result['reported_end'][:10]})")  # fmt: skip
    cols = ["row", "Sharpe", "Sortino", "max DD", "Calmar", "return/yr", "turnover/yr", "trades", "recover d",
            "ΔSharpe vs fixed (95 %)"]  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in result["rows"]:
        ci = r.get("sharpe_diff_vs_fixed_ci95")
        table.add_row(
            r["row"], f"{r['sharpe']:.2f}", f"{r['sortino']:.2f}", f"{r['max_drawdown'] * 100:.0f}%",
            f"{r['calmar']:.2f}", f"{r['annual_return'] * 100:+.1f}%", f"{r['turnover_per_year']:.0f}",
            f"{r['trades']:.0f}", f"{r['days_to_recover']:.0f}",
            "" if ci is None or r["sizing"] == "fixed" else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]",
        )  # fmt: skip
    Console().print(table)


def track(settings: Any, document: dict[str, Any]) -> str:
    """One parent MLflow run, a child run per (market, row)."""
    import mlflow

    from tasks.tracking import experiment_id, git_commit, use_store

    use_store(settings)
    mlflow.set_experiment(experiment_id=experiment_id(settings, EXPERIMENT))
    with mlflow.start_run(run_name=f"sizing research {time.strftime('%Y-%m-%d %H:%M')}") as parent:
        mlflow.set_tags({"git_commit": git_commit()})
        mlflow.log_dict(document, "sizing.json")
        for market in document["markets"]:
            for r in market["rows"]:
                with mlflow.start_run(run_name=f"{market['market']} {r['row']}", nested=True):
                    mlflow.log_params(
                        {"market": market["market"], "picker": r["picker"], "sizing": r["sizing"]}
                    )
                    mlflow.log_metrics({k: float(v) for k, v in r.items() if isinstance(v, int | float)})
        return str(parent.info.run_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markets", default="spot,futures")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--home", type=Path, default=ROOT / ".qt-research", help="bench/strategy.py's home")
    ap.add_argument("--no-track", action="store_true", help="do not log MLflow runs")
    args = ap.parse_args()
    from core.settings import load_settings
    from tasks.features.dataset import features_from_store
    from tasks.store import CandleStore

    settings = load_settings(args.home)
    defaults = argparse.Namespace(
        folds=14, test_days=1280, until="2025-06-15", profile="fast", seed=42, refit=False
    )  # fmt: skip  (bench/strategy.py's defaults: its cache)
    began = time.perf_counter()
    strategy.load(settings)
    oof = strategy.oof_table(settings, defaults, 1, ["xgb", "lgbm"])
    base = features_from_store(CandleStore(settings.store_dir), None, "1h", horizon=1)
    markets = []
    for market in [m.strip() for m in args.markets.split(",") if m.strip()]:
        result = research(base, oof, Costs.from_settings(settings, market), args.seed)
        show(result)
        markets.append(result)
    document = {"benchmark": "sizing", "seed": args.seed, "markets": markets,
                "seconds": time.perf_counter() - began}  # fmt: skip
    if not args.no_track:
        document["mlflow_run_id"] = track(settings, document)
    out = ROOT / "bench" / "results" / "sizing.json"
    out.write_text(json.dumps(document, indent=2, default=str))
    console.print(f"wrote {out.relative_to(ROOT)} ({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
