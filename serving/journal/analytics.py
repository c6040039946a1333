"""What the API's analytics and the dashboard show: the journal joined with the stored candles.

Every figure is read from what the live loop journalled (equity snapshots, signals, closed
trades, tick events) and from candles in the store — nothing is recomputed from a model.
A signal's outcome is its bar's next close against its close (the ``target_up`` the models
learned); a signal whose next bar is not stored yet has no outcome and is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from serving.journal import models as db
from serving.journal import report
from serving.journal.journal import Journal
from tasks import metrics

if TYPE_CHECKING:
    from tasks.strategy.engine import Strategy

HOUR = pd.Timedelta(hours=1)


def equity_curve(journal: Journal) -> pd.Series:
    """Equity at each decided bar's close, oldest first (float, UTC index)."""
    rows = journal.read(
        lambda s: [
            (e.time, float(e.equity)) for e in s.query(db.EquitySnapshot).order_by(db.EquitySnapshot.time)
        ]
    )
    if not rows:
        return pd.Series(dtype=np.float64)
    times, values = zip(*rows, strict=True)
    return pd.Series(values, index=pd.DatetimeIndex(pd.to_datetime(list(times), utc=True)), dtype=np.float64)


def buy_and_hold(closes: Mapping[str, pd.Series], index: pd.DatetimeIndex, start_equity: float) -> pd.Series:
    """Equal-weight buy-and-hold of ``closes`` over ``index``, starting at ``start_equity`` (no costs)."""
    if not len(index) or not closes:
        return pd.Series(dtype=np.float64)
    legs = []
    for series in closes.values():
        aligned = series.reindex(index, method="ffill").dropna()
        if len(aligned):
            legs.append(aligned / aligned.iloc[0])
    if not legs:
        return pd.Series(dtype=np.float64)
    return pd.concat(legs, axis=1).ffill().mean(axis=1) * start_equity


def daily(journal: Journal) -> list[dict[str, Any]]:
    """Per UTC day: closing equity, P&L against the previous day's close, trades closed."""
    curve = equity_curve(journal)
    if curve.empty:
        return []
    closing = curve.groupby(pd.DatetimeIndex(curve.index).strftime("%Y-%m-%d")).last()
    opening = closing.shift(1).fillna(curve.iloc[0]).to_numpy()
    trades = pd.Series([t["closed_at"][:10] for t in report.trades(journal)], dtype=object).value_counts()
    return [
        {"day": str(day), "equity": float(close), "pnl": float(close - start),
         "return": float(close / start - 1) if start else 0.0, "trades": int(trades.get(day, 0))}
        for (day, close), start in zip(closing.items(), opening, strict=True)
    ]  # fmt: skip


def symbols(
    journal: Journal, strategy: Strategy | None = None, now: pd.Timestamp | None = None,
    step: pd.Timedelta = HOUR,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per symbol: closed trades, win rate, mean R, net P&L, and the symbol manager's state at ``now``.

    The state is the strategy's own rule (:func:`tasks.strategy.kernel.symbol_disabled` and
    :func:`~tasks.strategy.kernel.symbol_scale`): ``disabled`` (in its cool-off after a
    losing streak, with ``disabled_until``), ``reduced`` (a negative track record: risk ×
    ``risk_scale``) or ``enabled``. ``now``: the newest decided bar (default: the clock).
    """
    from tasks.strategy import kernel as k
    from tasks.strategy.engine import Strategy
    from tasks.strategy.market import track_record

    frame = pd.DataFrame(report.trades(journal))
    if frame.empty:
        return []
    strategy = strategy or Strategy()
    params = strategy.parameters[0]
    at = (now or pd.Timestamp.now(tz="UTC")).value
    frame["net"] = frame["net_pnl"].astype(float)
    frame["r"] = frame["r_multiple"].astype(float)
    out = []
    for symbol, rows in frame.sort_values("closed_at", kind="stable").groupby("symbol"):
        track, _, streak = track_record(list(rows["r"].fillna(0.0)), strategy.track_alpha)
        last_exit = pd.Timestamp(rows["closed_at"].iloc[-1]).value
        disabled = bool(k.symbol_disabled(params, streak, last_exit, at, step.value))
        scale = float(k.symbol_scale(params, track, len(rows)))
        until = pd.Timestamp(last_exit + strategy.risk.symbol_cooloff_bars * step.value, tz="UTC")
        out.append(
            {"symbol": str(symbol), "trades": len(rows), "win_rate": float((rows["net"] > 0).mean()),
             "mean_r": float(rows["r"].mean()) if rows["r"].notna().any() else None,
             "net_pnl": float(rows["net"].sum()), "track_r": float(track), "losing_streak": streak,
             "state": "disabled" if disabled else "reduced" if scale < 1 else "enabled", "risk_scale": scale,
             "disabled_until": until.isoformat() if disabled else None}
        )  # fmt: skip
    return out


def model_outcomes(journal: Journal, closes: Mapping[str, pd.Series], step: pd.Timedelta) -> pd.DataFrame:
    """One row per traded model's signal with a known outcome: model, symbol, time, p_up, up (0/1).

    Shadow predictions (the challenger's, journalled as ``"<version> (challenger)"``) are left out.
    """
    signals = journal.read(
        lambda s: [(x.time, x.symbol, x.model_version, dict(x.p_up)) for x in s.query(db.Signal)]
    )
    rows = []
    for when, symbol, version, p_up in signals:
        if "(" in version or symbol not in closes:  # shadow predictions are someone else's record
            continue
        series, t = closes[symbol], pd.Timestamp(when)
        t = t.tz_localize("UTC") if t.tzinfo is None else t
        if t not in series.index or t + step not in series.index:
            continue
        up = float(series[t + step] > series[t])
        rows += [(name, symbol, t, float(p), up, version) for name, p in p_up.items()]
    return pd.DataFrame(rows, columns=["model", "symbol", "time", "p_up", "up", "version"])


def models(outcomes: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model: live rows, accuracy, log loss, ECE, mean P(up) beside the realised up share."""
    out = []
    for name, rows in outcomes.groupby("model"):
        y, p = rows["up"].to_numpy(), np.clip(rows["p_up"].to_numpy(), 1e-6, 1 - 1e-6)
        out.append(
            {"model": str(name), "rows": len(rows), "accuracy": float(((p > 0.5) == (y > 0.5)).mean()),
             "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
             "ece": float(metrics.ece(y, p)), "mean_p_up": float(p.mean()), "up_share": float(y.mean()),
             "buy_share": float((p > 0.5).mean())}
        )  # fmt: skip
    return out


def last_tick(journal: Journal) -> dict[str, Any] | None:
    """The newest tick event's detail (bar, seconds, mode, model version, counts), with its time."""
    events = journal.recent_events(1, "tick")
    if not events:
        return None
    return {**events[0].detail, "time": events[0].time.isoformat()}


def tick_seconds(journal: Journal, limit: int = 500) -> list[float]:
    """Durations of the newest decided ticks, newest first."""
    return [float(e.detail.get("seconds", 0.0)) for e in journal.recent_events(limit, "tick")]


def counts(journal: Journal) -> dict[str, Any]:
    """Decisions, vetoes by rule, orders, fills and unprotected events, as totals."""
    from sqlalchemy import func, select

    def ask(session: Any) -> dict[str, Any]:
        vetoes = session.execute(select(db.Veto.rule, func.count()).group_by(db.Veto.rule)).all()
        return {
            "decisions": session.scalar(select(func.count()).select_from(db.Decision)) or 0,
            "vetoes": {str(rule): int(n) for rule, n in vetoes},
            "orders": session.scalar(select(func.count()).select_from(db.Order)) or 0,
            "fills": session.scalar(select(func.count()).select_from(db.Fill)) or 0,
        }

    return journal.read(ask)
