"""``qt live``: the live-trading loop in the foreground, or a replay of stored candles through it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer

from cli.app import HomeOpt, IntervalOpt, JsonOpt, MarketOpt, SymbolsOpt, app, parse_symbols, run
from cli.output import stderr
from cli.trading import BrokerOpt
from core.settings import Settings


@app.command()
def live(
    once: Annotated[bool, typer.Option("--once", help="One tick, then exit.")] = False,
    minutes: Annotated[
        int | None, typer.Option("--minutes", min=1, help="Tick once a minute for N minutes.")
    ] = None,
    broker: BrokerOpt = "paper",
    market: MarketOpt = "spot",
    interval: IntervalOpt = None,
    symbols: SymbolsOpt = None,
    replay_from: Annotated[
        str | None, typer.Option("--replay-from", help="Replay the stored candles from DATE (UTC) on.")
    ] = None,
    replay_to: Annotated[
        str | None, typer.Option("--replay-to", help="Last bar of the replay (UTC).")
    ] = None,
    replay_dir: Annotated[
        Path | None, typer.Option("--replay", help="Replay candle files in DIR after the store's newest.")
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            "--speed",
            min=0,
            help="Replay pace: X times live's tick a minute (1000: every 60 ms; 0: flat out).",
        ),
    ] = 0.0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trade the champion: a tick per minute (--once, --minutes), or replay candles through the loop.

    Every tick resolves the champion (hot reload on a new version), fetches closed candles,
    lets the strategy decide on a new bar, trades through --broker (paper by default) with
    a live stop on every position, and journals it all. No champion: no new positions.
    A replay (--replay-from DATE | --replay DIR) runs offline against the local exchange and
    journals into <home>/replays/, never into the live journal.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.errors import BadConfigError
        from core.timeutil import parse_utc
        from serving.brokers.factory import check_choice

        replaying = replay_from is not None or replay_dir is not None
        if replay_from is not None and replay_dir is not None:
            raise BadConfigError("--replay-from and --replay: choose one")
        if not replaying and once == (minutes is not None):
            raise BadConfigError(
                "qt live needs --once or --minutes N (or a replay: --replay-from / --replay)"
            )
        check_choice(broker, market, None if replaying else settings)
        config = _config(settings, interval, market, parse_symbols(symbols))
        if replaying:
            from serving.replay import replay, replay_files

            frames = replay_files(replay_dir, settings, config) if replay_dir is not None else None
            start = parse_utc(replay_from, "--replay-from") if replay_from else None
            start = start if start is not None else _after_store(settings, config)
            end = parse_utc(replay_to, "--replay-to")
            summary, target = replay(settings, config, broker, start, end, speed, frames, _status(as_json))
            return _document(summary, target, broker, market, replay=str(target.home)), None
        summary, target = _run_live(settings, config, broker, 1 if once else minutes)
        return _document(summary, target, broker, market), None

    run(home, as_json, command)


def _config(settings: Settings, interval: str | None, market: str, symbols: list[str] | None) -> Any:
    from core.errors import BadConfigError
    from serving.live import LiveConfig
    from tasks.store import CandleStore

    ival = interval or settings.default_interval
    stored = CandleStore(settings.store_dir).symbols(ival, market)
    universe = symbols or stored
    if not universe:
        raise BadConfigError(
            f"no stored {ival} {market} candles: run qt ingest (the universe is what is stored)"
        )
    unknown = [s for s in universe if s not in stored]
    if unknown:
        raise BadConfigError(f"--symbols {','.join(unknown)}: no stored {ival} {market} candles (qt ingest)")
    return LiveConfig.of(settings, tuple(universe), ival, market)


def _after_store(settings: Settings, config: Any) -> Any:
    from tasks.store import CandleStore

    store = CandleStore(settings.store_dir)
    newest = max(
        span[1] for s in config.symbols if (span := store.time_range(s, config.interval, config.market))
    )
    return newest + config.step


def _run_live(settings: Settings, config: Any, broker: str, ticks: int | None) -> tuple[Any, Settings]:
    import time

    from serving.brokers.factory import open_broker
    from serving.journal import Journal
    from serving.live_loop import LiveLoop
    from serving.replay import price_of as venue_price
    from tasks.ingest.binance import BinanceKlineSource, make_client

    client = make_client(settings)
    journal = Journal.open(settings)
    venue = open_broker(settings, journal, broker, config.market, client=client)
    source = BinanceKlineSource(settings, config.market, client=client)
    loop = LiveLoop(
        settings,
        config,
        venue,
        journal,
        source,
        venue_price(client, config.market),
        settings.paper_cash if broker == "paper" else None,
    )

    def next_minute() -> None:
        time.sleep(60.0 - time.time() % 60.0)

    return loop.run(ticks, next_minute, _status(False)), settings


def _status(quiet: bool) -> Any:
    def show(report: Any) -> None:
        if quiet:
            return
        problems = f" [red]{'; '.join(report.errors)}[/]" if report.errors else ""
        stderr.print(
            f"bar {report.bar_time or '-'}  model v{report.model_version or '-'}  signals {report.signals}  "
            f"orders {report.orders}  vetoes {report.vetoes}{problems}",
            highlight=False,
        )

    return show


def _document(
    summary: Any, settings: Settings, broker: str, market: str, replay: str | None = None
) -> dict[str, Any]:
    """The INTERFACES summary, from the run and the journal it wrote."""
    from decimal import Decimal

    from serving.journal import Journal, report
    from serving.journal import models as db

    journal = Journal.open(settings)
    fills = journal.read(lambda s: s.query(db.Fill).all())
    snapshot = journal.read(
        lambda s: s.query(db.EquitySnapshot).order_by(db.EquitySnapshot.time.desc()).first()
    )
    seconds = sorted(summary.tick_seconds)
    return {
        "ticks": summary.ticks,
        "model_version": summary.model_version,
        "signals": summary.signals,
        "orders": summary.orders,
        "fills": len(fills),
        "vetoes": summary.vetoes,
        "open_positions": len(journal.open_positions()),
        "unprotected_positions": summary.unprotected_positions,
        "closed_trades": len(report.trades(journal)),
        "equity": float(snapshot.equity) if snapshot is not None else None,
        "fees_paid": float(sum((f.fee for f in fills), Decimal(0))),
        "broker": broker,
        "market": market,
        "replay": replay,
        "errors": summary.errors[-20:],
        "tick_p50_s": seconds[len(seconds) // 2] if seconds else None,
        "tick_max_s": seconds[-1] if seconds else None,
    }


@app.command()
def supervise(
    market: MarketOpt = "spot",
    interval: IntervalOpt = None,
    retrain: Annotated[
        bool, typer.Option("--retrain/--no-retrain", help="Start triggered-retrain when a check fails.")
    ] = True,
    replay: Annotated[
        str | None, typer.Option("--replay", help="Supervise a replay's journal: its folder, or 'latest'.")
    ] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the live model now (what supervisor/hourly runs): calibration, bias, feature drift.

    Joins the journal's signals of the traded model with the outcomes in the store (the
    newest 168 bars): log loss against climatology, accuracy, ECE, calibration slope, the
    BUY share against the up share, and each feature's PSI against the training window.
    A failed check moves the risk engine to DEFENSIVE and starts the triggered-retrain
    deployment (once per 24 h; --no-retrain only journals). Logged to MLflow's monitoring
    experiment (a run per day, with plots).
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.errors import BadConfigError
        from flows.supervisor import supervisor_flow

        if market not in ("spot", "futures"):
            raise BadConfigError(f"--market {market!r}: use spot or futures")
        chosen = cast(Literal["spot", "futures"], market)
        verdict = supervisor_flow(str(settings.home), chosen, interval, retrain, replay)
        return verdict, _verdict_table(verdict)

    run(home, as_json, command)


def _verdict_table(verdict: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.text import Text

    from cli.app import fmt
    from cli.output import table

    checks = table(
        "checks (the ensemble)", ["check", "value", "bound", "passed"],
        [[c["check"], fmt(c["value"]), f"{c['sense']} {fmt(c['bound'])}", "yes" if c["passed"] else "NO"]
         for c in verdict["checks"]],
    )  # fmt: skip
    models = table(
        "live record per model", ["model", "rows", "log loss", "clim.", "accuracy", "ECE", "slope", "bias"],
        [[m["model"], m["rows"], fmt(m["log_loss"]), fmt(m["log_loss_climatology"]), fmt(m["accuracy"], 3),
          fmt(m["ece"]), fmt(m["calibration_slope"], 2), fmt(m["bias"], 3)] for m in verdict["models"]],
    )  # fmt: skip
    why = "; ".join(verdict["reasons"]) or verdict["note"] or "every check passed"
    head = Text(f"v{verdict['model_version']}: {verdict['mode']} ({verdict['rows']} signals) — {why}")
    parts: list[Any] = [head, checks, models]
    if verdict["retrain_run_id"]:
        parts.append(Text(f"triggered retrain: flow run {verdict['retrain_run_id']}"))
    return Group(*parts)
