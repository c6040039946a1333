"""The live-trading flow: one Prefect flow run is one tick of :class:`serving.live_loop.LiveLoop`.

The every-minute deployment (:mod:`flows.deploy`) runs it with a concurrency limit of 1 so
two ticks never overlap, and under the home's global concurrency limit
(:data:`HOME_LIMIT`, shared with the training flow) so a retrain and a tick do not fight
for the same home's locks. The tick's work is :mod:`serving.live`; this module only composes
it for Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow

#: The global concurrency limit both the training and the live flow take for one home.
HOME_LIMIT = "quantum-trader-home"
#: The global concurrency limit a training flow holds from its first read to its decision.
RETRAIN_LIMIT = "quantum-trader-retrain"


@flow(name="live", validate_parameters=True, log_prints=False)
def live_flow(
    home: str | None = None,
    broker: Literal["paper", "binance"] = "paper",
    market: Literal["spot", "futures"] = "spot",
    interval: str | None = None,
    symbols: list[str] | None = None,
) -> dict[str, Any]:
    """One live tick: the champion, new candles, the strategy, the broker, the journal.

    Args:
        home: the home (store, registry, journal); default ``QT_HOME`` of the process that
            runs the flow (a work pool's worker: :func:`flows.deploy.apply_deployments`).
        broker: paper or binance (keys from the environment).
        market: spot or futures.
        interval: candle interval (default: the settings').
        symbols: the universe (default: every stored symbol of the interval and market).

    Returns:
        The tick's report: bar, model version, signals, orders, vetoes, errors.
    """
    from prefect.concurrency.sync import concurrency

    from core.settings import configure_environment, load_settings

    settings = load_settings(Path(home) if home else None)
    configure_environment(settings)
    with concurrency(HOME_LIMIT, occupy=1, strict=False):
        loop = build_loop(settings, broker, market, interval, symbols)
        report = loop.tick()
    return {
        "bar_time": report.bar_time.isoformat() if report.bar_time is not None else None,
        "model_version": report.model_version,
        "signals": report.signals,
        "orders": report.orders,
        "vetoes": report.vetoes,
        "unprotected_positions": report.unprotected_positions,
        "errors": report.errors,
    }


def build_loop(
    settings: Any, broker: str, market: str, interval: str | None, symbols: list[str] | None
) -> Any:
    """A :class:`~serving.live_loop.LiveLoop` on the venue the settings name (Binance or its testnet)."""
    from core.errors import BadConfigError
    from serving.brokers.factory import check_choice, open_broker
    from serving.journal import Journal
    from serving.live import LiveConfig
    from serving.live_loop import LiveLoop
    from serving.replay import price_of
    from tasks.ingest.binance import BinanceKlineSource, make_client
    from tasks.store import CandleStore

    check_choice(broker, market, settings)
    ival = interval or settings.default_interval
    stored = CandleStore(settings.store_dir).symbols(ival, market)
    universe = list(symbols or stored)
    unknown = [s for s in universe if s not in stored]
    if not universe or unknown:
        raise BadConfigError(
            f"universe {unknown or '(empty)'}: no stored {ival} {market} candles; run qt ingest"
        )
    config = LiveConfig.of(settings, tuple(universe), ival, market)
    client = make_client(settings)
    journal = Journal.open(settings)
    venue = open_broker(settings, journal, broker, market, client=client)
    source = BinanceKlineSource(settings, market, client=client)
    return LiveLoop(
        settings,
        config,
        venue,
        journal,
        source,
        price_of(client, market),
        settings.paper_cash if broker == "paper" else None,
    )
