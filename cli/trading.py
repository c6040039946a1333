"""``qt positions``, ``qt orders``, ``qt trades`` read the journal; ``qt reconcile`` repairs the venue."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.app import HomeOpt, IntervalOpt, JsonOpt, MarketOpt, app, run
from cli.output import table
from core.settings import Settings


def _journal(settings: Settings) -> Any:
    """The journal, or None before anything was journalled (a read creates nothing)."""
    from serving.journal import Journal

    return Journal.if_exists(settings)


@app.command()
def positions(
    interval: IntervalOpt = None, market: MarketOpt = "spot", home: HomeOpt = None, as_json: JsonOpt = False
) -> None:
    """Open positions with their stop and take-profit legs as the venue holds them, and P&L.

    Unrealised P&L is at the newest stored close of each symbol (--interval, --market).
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from decimal import Decimal

        from serving.journal import report
        from tasks.store import CandleStore

        journal = _journal(settings)
        if journal is None:
            return {"positions": []}, table("Open positions (no journal yet)", ["symbol"], [])
        store = CandleStore(settings.store_dir)
        ival = interval or settings.default_interval
        held = {p.symbol for p in journal.open_positions()}
        prices = {}
        for symbol in held:
            newest = store.time_range(symbol, ival, market)
            if newest is not None:
                close = store.read(symbol, ival, market, start=newest[1])["close"].iloc[-1]
                prices[symbol] = Decimal(str(close))
        rows_ = report.positions(journal, prices)
        rows = [
            [p["symbol"], p["side"], p["quantity"], p["entry_price"], p["stop"] or "NONE",
             ", ".join(f"{t['price']}×{t['quantity']}" for t in p["take_profits"]) or "-",
             p["unrealised_pnl"] or "-", p["model_version"] or "-"]
            for p in rows_
        ]  # fmt: skip
        columns = ["symbol", "side", "qty", "entry", "stop", "take-profits", "unrealised", "model"]
        return {"positions": rows_}, table("Open positions", columns, rows)

    run(home, as_json, command, writes=False)


@app.command()
def orders(
    symbol: Annotated[str | None, typer.Option("--symbol", help="Only this symbol.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open orders (entries, stops, take-profit legs) as journalled."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.candles import check_symbol
        from serving.journal import report

        journal = _journal(settings)
        found = [] if journal is None else report.orders(journal, check_symbol(symbol) if symbol else None)
        rows = [
            [o["client_order_id"], o["symbol"], o["side"], o["type"], o["quantity"], o["stop_price"] or "-",
             o["status"]]
            for o in found
        ]  # fmt: skip
        columns = ["client order id", "symbol", "side", "type", "qty", "stop", "status"]
        return {"orders": found}, table("Open orders", columns, rows)

    run(home, as_json, command, writes=False)


@app.command()
def trades(
    since: Annotated[str | None, typer.Option("--since", help="Trades closed at or after (UTC).")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Closed trades: entry, exit, fees, net P&L, R multiple and the model version that opened each."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.timeutil import parse_utc
        from serving.journal import report

        start = parse_utc(since, "--since")
        journal = _journal(settings)
        found = [] if journal is None else report.trades(journal, start.to_pydatetime() if start else None)
        rows = [
            [t["symbol"], t["side"], t["quantity"], t["entry_price"], t["exit_price"] or "-", t["fees"],
             t["net_pnl"], f"{t['r_multiple']:+.2f}" if t["r_multiple"] is not None else "-",
             t["model_version"] or "-"]
            for t in found
        ]  # fmt: skip
        columns = ["symbol", "side", "qty", "entry", "exit", "fees", "net P&L", "R", "model"]
        return {"trades": found}, table("Closed trades", columns, rows)

    run(home, as_json, command, writes=False)


BrokerOpt = Annotated[
    str,
    typer.Option(
        "--broker", help="paper (the journal is the venue) or binance (QT_BINANCE_API_KEY / _SECRET)."
    ),
]


@app.command()
def reconcile(
    broker: BrokerOpt = "paper", market: MarketOpt = "spot", home: HomeOpt = None, as_json: JsonOpt = False
) -> None:
    """Read back the venue's positions and open orders; re-place missing stops, journal what happened.

    A position whose stop cannot be placed twice is closed at market. Exit 1 when a position
    is still unprotected afterwards.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.errors import QTError
        from serving.brokers.factory import check_choice, open_broker
        from serving.journal import Journal

        check_choice(broker, market, settings)  # before the journal is opened: nothing written
        done = open_broker(settings, Journal(settings.journal_uri), broker, market).reconcile()
        held = [
            {
                "symbol": p.symbol,
                "side": p.side,
                "quantity": str(p.quantity),
                "entry_price": str(p.entry_price),
            }
            for p in done.positions
        ]
        document = {
            "broker": broker, "market": market, "positions": held,
            "missing_stops": done.missing_stops, "replaced": done.replaced,
            "closed_at_market": done.closed_at_market, "unprotected_positions": done.unprotected_positions,
        }  # fmt: skip
        if done.unprotected_positions:
            raise QTError(f"{done.unprotected_positions} position(s) without a live stop after reconcile")
        rows = [[p["symbol"], p["side"], p["quantity"], p["entry_price"]] for p in held]
        title = (
            f"Reconciled ({broker} {market}): {len(done.missing_stops)} missing stop(s), "
            f"{len(done.replaced)} re-placed, {len(done.closed_at_market)} closed at market"
        )
        return document, table(title, ["symbol", "side", "qty", "entry"], rows)

    run(home, as_json, command)
