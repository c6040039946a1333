"""The trader's dashboard at ``/``: one server-rendered page that refreshes itself.

Equity curve beside equal-weight buy-and-hold of the traded symbols (an SVG drawn here:
no charting library from a CDN, the machine may be offline), open positions with their
stop and take-profit legs, recent trades, the risk mode, the champion's version and its
live calibration. Every number is what ``/api/...`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import pandas as pd

from serving.journal import analytics, report

if TYPE_CHECKING:
    from serving.api import Service

#: seconds between the page's own refreshes
REFRESH_SECONDS = 30

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#f7f8fa}
h1{font-size:1.3rem;margin:0 0 .8rem} h2{font-size:1.05rem;margin:1.4rem 0 .4rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap} .card{background:#fff;border:1px solid #dde1e8;
border-radius:6px;padding:.6rem 1rem;min-width:9rem} .card b{display:block;font-size:1.15rem}
table{border-collapse:collapse;background:#fff;font-size:.9rem} td,th{border:1px solid #dde1e8;
padding:.25rem .6rem;text-align:right} th{background:#eef1f5} td:first-child{text-align:left}
.empty{color:#6b7280;font-style:italic} svg{background:#fff;border:1px solid #dde1e8}
.legend span{margin-right:1rem} .warn{color:#b91c1c;font-weight:600}
"""


def line_chart(
    series: dict[str, pd.Series], colors: Sequence[str], width: int = 760, height: int = 240
) -> str:
    """An SVG line chart of ``series`` (name → values over a time index) on one shared axis."""
    drawn = {k: v.dropna() for k, v in series.items() if len(v.dropna()) >= 2}
    if not drawn:
        return '<p class="empty" id="equity-chart">no equity snapshots yet</p>'
    start = min(v.index[0] for v in drawn.values())
    end = max(v.index[-1] for v in drawn.values())
    low = min(float(v.min()) for v in drawn.values())
    high = max(float(v.max()) for v in drawn.values())
    span_t = max((end - start).total_seconds(), 1.0)
    span_y = max(high - low, abs(high) * 1e-6, 1e-9)
    pad = 40

    def x(t: pd.Timestamp) -> float:
        return pad + (t - start).total_seconds() / span_t * (width - 2 * pad)

    def y(v: float) -> float:
        return height - pad + (low - v) / span_y * (height - 2 * pad)

    lines = []
    for (name, values), color in zip(drawn.items(), colors, strict=False):
        pairs = zip(values.index, values.to_numpy(), strict=True)
        points = " ".join(f"{x(pd.Timestamp(t)):.1f},{y(float(v)):.1f}" for t, v in pairs)
        lines.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
    axis = (
        f'<text x="{pad}" y="{height - 12}" font-size="11">{start:%Y-%m-%d %H:%M}</text>'
        f'<text x="{width - pad}" y="{height - 12}" font-size="11" text-anchor="end">'
        f"{end:%Y-%m-%d %H:%M}</text>"
        f'<text x="4" y="{y(high) + 4:.1f}" font-size="11">{high:,.0f}</text>'
        f'<text x="4" y="{y(low) + 4:.1f}" font-size="11">{low:,.0f}</text>'
    )
    legend = "".join(
        f'<span style="color:{c}">■ {escape(n)}</span>' for n, c in zip(drawn, colors, strict=False)
    )
    return (
        f'<svg id="equity-chart" width="{width}" height="{height}" role="img" aria-label="equity curve">'
        f'{axis}{"".join(lines)}</svg><div class="legend">{legend}</div>'
    )


def table(table_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> str:
    """An HTML table, or a line saying why it is empty."""
    if not rows:
        return f'<p class="empty" id="{table_id}">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4f}"
    return str(value)


def render(service: Service) -> str:
    """The whole page."""
    journal = service.journal()
    health = service.health()
    curve = analytics.equity_curve(journal) if journal else pd.Series(dtype=float)
    symbols = service.store.symbols(service.interval, service.market)
    held = service.positions()
    closed = report.trades(journal) if journal else []
    traded = sorted({t["symbol"] for t in closed} | {p["symbol"] for p in held})
    benchmark = pd.Series(dtype=float)
    if len(curve):
        closes = service.closes(traded or symbols, since=curve.index[0])
        benchmark = analytics.buy_and_hold(closes, pd.DatetimeIndex(curve.index), float(curve.iloc[0]))
    chart = line_chart(
        {"equity": curve, "buy-and-hold (equal weight, no costs)": benchmark}, ["#2563eb", "#9ca3af"]
    )
    positions = table(
        "positions", ["symbol", "side", "qty", "entry", "stop", "take-profits", "unrealised", "model"],
        [[p["symbol"], p["side"], p["quantity"], p["entry_price"], p["stop"] or "NONE",
          ", ".join(f"{t['price']}×{t['quantity']}" for t in p["take_profits"]) or "—",
          p["unrealised_pnl"], p["model_version"]] for p in held],
        "no open positions",
    )  # fmt: skip
    trades = closed[-20:]
    trade_table = table(
        "trades", ["symbol", "side", "qty", "entry", "exit", "closed", "net P&L", "R", "model"],
        [[t["symbol"], t["side"], t["quantity"], t["entry_price"], t["exit_price"], t["closed_at"],
          t["net_pnl"], t["r_multiple"], t["model_version"]] for t in reversed(trades)],
        "no closed trades yet",
    )  # fmt: skip
    live_models = service.live_models()
    calibration = table(
        "calibration", ["model", "rows", "accuracy", "log loss", "ECE", "mean P(up)", "up share"],
        [[m["model"], m["rows"], m["accuracy"], m["log_loss"], m["ece"], m["mean_p_up"], m["up_share"]]
         for m in live_models],
        "no live signals with a known outcome yet",
    )  # fmt: skip
    symbol_table = table(
        "symbols", ["symbol", "trades", "win rate", "mean R", "net P&L", "losing streak", "state", "until"],
        [[r["symbol"], r["trades"], r["win_rate"], r["mean_r"], r["net_pnl"], r["losing_streak"],
          r["state"] if r["risk_scale"] == 1 or r["state"] == "disabled" else f"reduced ×{r['risk_scale']}",
          (r["disabled_until"] or "—")[:16]] for r in service.symbols()],
        "no closed trades yet",
    )  # fmt: skip
    verdict = health["supervisor"]
    supervision = '<p class="empty">no verdict yet (the supervisor/hourly deployment writes one)</p>'
    if verdict:
        why = "; ".join(verdict["reasons"]) or verdict["note"] or "every check passed"
        at, version = str(verdict["event_time"])[:16], str(verdict["model_version"])
        supervision = (
            f"<p>{escape(verdict['mode'])} at {escape(at)} on v{escape(version)} "
            f"({verdict['rows']} signals with an outcome): {escape(why)}</p>"
        )
    naked = sum(p["stop"] is None for p in held)
    equity = f"{curve.iloc[-1]:,.2f}" if len(curve) else "—"
    tick = health["last_tick"]
    cards = [
        ("champion", f"v{health['model_version']}" if health["model_version"] else "none"),
        ("risk mode", health["risk_mode"] or "—"),
        ("supervisor", verdict["mode"] if verdict else "—"),
        ("equity", equity),
        ("open positions", str(len(held))),
        ("unprotected", str(naked)),
        ("last bar", tick["bar"][:16] if tick else "—"),
    ]
    card_html = "".join(
        f'<div class="card">{escape(k)}<b class="{"warn" if k == "unprotected" and naked else ""}">'
        f"{escape(v)}</b></div>"
        for k, v in cards
    )
    problem = health["model_error"]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><title>Quantum Trader</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Quantum Trader — {escape(service.interval)} {escape(service.market)}</h1>"
        + (f'<p class="warn">{escape(problem)}</p>' if problem else "")
        + f'<div class="cards">{card_html}</div>'
        f"<h2>Equity</h2>{chart}<h2>Open positions</h2>{positions}"
        f"<h2>Recent trades</h2>{trade_table}"
        f"<h2>Live calibration (the traded model's signals)</h2>{calibration}"
        f"<h2>Model supervisor</h2>{supervision}<h2>Symbols</h2>{symbol_table}"
        f'<p class="empty">refreshes every {REFRESH_SECONDS} s · JSON under /api · docs at /docs</p>'
        "</body></html>"
    )
