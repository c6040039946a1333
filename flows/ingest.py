"""Ingest flow: plan the datasets → (fetch → validate → store) per dataset, concurrently.

Runs in Prefect's ephemeral mode (no server) or against ``PREFECT_API_URL``. A dataset is
one (market, symbol, interval); datasets are independent tasks: one failing dataset is
quarantined and reported while the others are stored; the flow then fails naming every
failure. Only retryable errors are retried.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from core import progress
from core.candles import check_market, interval_ms
from core.errors import IngestError, QTError, RetryableError
from core.settings import Settings, load_settings
from core.timeutil import parse_range, parse_utc
from flows.runners import io_runner
from tasks.ingest import SymbolReport, ingest_binance, ingest_files
from tasks.ingest.binance import BinanceKlineSource
from tasks.ingest.files import expand_paths, group_files
from tasks.ingest.sample import SAMPLE_INTERVAL, sample_paths

Source = Literal["sample", "files", "binance"]
log = logging.getLogger(__name__)


def _retry_only_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures, but not when the exchange told us how long to back off."""
    return isinstance(state.data, RetryableError) and state.data.retry_after is None


_task_options: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": _retry_only_retryable,
    "cache_policy": NO_CACHE,
}


@task(name="plan-universe", **_task_options)
def plan_universe(settings: Settings, market: str, top: int, min_quote_volume: float) -> list[str]:
    """Top-N symbols by 24h quote volume (the seeds' "Universe OS")."""
    return BinanceKlineSource(settings, market).top_symbols(top, min_quote_volume, settings.quote_asset)


@task(name="ingest-files", task_run_name="ingest-{symbol}-{interval}", **_task_options)
def ingest_files_task(
    symbol: str,
    interval: str,
    market: str,
    paths: list[Path],
    source: str,
    settings: Settings,
    start: str | None = None,
    end: str | None = None,
    overwrite: bool = False,
) -> SymbolReport:
    """Read → validate → store one dataset from files (candles within start/end)."""
    return _completed(
        ingest_files(
            symbol,
            interval,
            market,
            paths,
            source,
            settings,
            parse_utc(start, "--start"),
            parse_utc(end, "--end"),
            overwrite,
        )
    )


@task(name="ingest-binance", task_run_name="ingest-{symbol}-{interval}", **_task_options)
def ingest_binance_task(
    symbol: str,
    interval: str,
    market: str,
    start: str | None,
    end: str | None,
    settings: Settings,
    overwrite: bool = False,
) -> SymbolReport:
    """Fetch (closed candles, paged, retried) → validate → store one symbol from Binance."""
    first, last = parse_utc(start, "--start"), parse_utc(end, "--end")
    return _completed(ingest_binance(symbol, interval, market, first, last, settings, overwrite=overwrite))


def _completed(report: SymbolReport) -> SymbolReport:
    """Record a stored dataset so an interrupted command can say it was stored."""
    progress.complete(dataset_key(report.market, report.symbol, report.interval), report.to_json())
    return report


def dataset_key(market: str, symbol: str, interval: str) -> str:
    """How an interrupted command names a dataset: ``spot BTCUSDT 1h``."""
    return f"{market} {symbol} {interval}"


@flow(name="ingest", task_runner=io_runner(load_settings()), log_prints=False, validate_parameters=True)
def ingest_flow(
    source: Source = "sample",
    symbols: list[str] | None = None,
    interval: str | None = None,
    market: str = "spot",
    start: str | None = None,
    end: str | None = None,
    paths: list[str] | None = None,
    top: int | None = None,
    min_quote_volume: float | None = None,
    home: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Load candles into the store, validated; idempotent.

    A candle already stored with other values is a conflict (exit 2, both values named)
    unless ``overwrite``.

    Returns:
        ``{"symbols": {KEY: {"symbol", "interval", "market", "rows_added", "rows_total",
        "first_open_time", "last_open_time", "gaps", ...}}, "failed": {}}``
        (``qt ingest --json``). KEY is the symbol when the run covers one interval, else
        ``SYMBOL-INTERVAL`` (as Binance names the files), so no dataset hides another.

    Raises:
        IngestError: some datasets failed (the others were stored); ``.report`` holds
            both the stored ones and, under ``"failed"``, each failure.
    """
    settings = load_settings(Path(home) if home else None)
    check_market(market)
    parse_range(start, end)
    if interval is not None:
        interval_ms(interval)  # fail before any network call
    futures: dict[tuple[str, str, str], PrefectFuture[SymbolReport]] = {}
    if source == "binance":
        ival = interval or settings.default_interval
        universe = symbols or plan_universe(
            settings,
            market,
            top or 10,
            settings.min_quote_volume if min_quote_volume is None else min_quote_volume,
        )
        progress.plan(*(dataset_key(market, symbol, ival) for symbol in universe))
        for symbol in universe:
            futures[(market, symbol, ival)] = ingest_binance_task.submit(
                symbol, ival, market, start, end, settings, overwrite
            )
    else:
        files = sample_paths(symbols, interval) if source == "sample" else expand_paths(paths or [])
        wanted_interval = SAMPLE_INTERVAL if source == "sample" else interval
        groups = group_files(files, symbols, wanted_interval)
        progress.plan(*(dataset_key(market, symbol, ival) for symbol, ival in groups))
        for (symbol, dataset_interval), group in groups.items():
            futures[(market, symbol, dataset_interval)] = ingest_files_task.submit(
                symbol, dataset_interval, market, group, source, settings, start, end, overwrite
            )
    return _gather(futures)


def _gather(futures: dict[tuple[str, str, str], PrefectFuture[SymbolReport]]) -> dict[str, Any]:
    """Wait for every dataset; report the stored ones, then fail naming the others."""
    one_interval = len({interval for _, _, interval in futures}) <= 1
    report: dict[str, Any] = {"symbols": {}, "failed": {}}
    failures: dict[str, QTError] = {}
    for (market, symbol, interval), future in futures.items():
        key = symbol if one_interval else f"{symbol}-{interval}"
        try:
            report["symbols"][key] = future.result().to_json()
        except QTError as err:
            failures[key] = err
        except Exception as err:  # a bug must not lose the other datasets' reports
            log.exception("%s %s %s: unexpected failure", market, symbol, interval)
            failures[key] = QTError(f"unexpected {type(err).__name__}: {err}")
        if key in failures:
            failure = failures[key]
            quarantined = getattr(failure, "quarantine", None)
            report["failed"][key] = {
                "symbol": symbol,
                "interval": interval,
                "market": market,
                "error": str(failure),
                "exit_code": failure.exit_code,
                "quarantine": str(quarantined) if quarantined else None,
            }
    if failures:
        error = IngestError(failures)
        error.report = report
        raise error
    return report
