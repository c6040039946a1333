"""Ingest: get candles from a source, validate them, store them — one symbol at a time.

These are the plain functions the Prefect flow in ``flows/ingest.py`` composes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import progress
from core.candles import interval_ms, to_store_frame
from core.errors import BadDataError
from core.settings import Settings
from core.timeutil import now_ms, to_iso, to_ms
from tasks.batch import CandleBatch, coerce_numeric
from tasks.ingest.binance import BinanceKlineSource
from tasks.ingest.files import combine_files, read_candle_file
from tasks.quarantine import quarantine
from tasks.store import CandleStore, UpsertResult
from tasks.validate import NEIGHBOURS, validate_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SymbolReport:
    """What one symbol's ingest did; the JSON of ``qt ingest`` per symbol."""

    symbol: str
    interval: str
    market: str
    rows_added: int
    rows_updated: int
    rows_total: int
    first_open_time: str | None
    last_open_time: str | None
    gaps: int
    missing_candles: int

    @classmethod
    def from_upsert(cls, batch: CandleBatch, result: UpsertResult) -> SymbolReport:
        """Build the report of a batch from what the store did with it."""
        return cls(
            symbol=batch.symbol,
            interval=batch.interval,
            market=batch.market,
            rows_added=result.rows_added,
            rows_updated=result.rows_updated,
            rows_total=result.rows_total,
            first_open_time=to_iso(result.first_open_time),
            last_open_time=to_iso(result.last_open_time),
            gaps=result.gaps,
            missing_candles=result.missing_candles,
        )

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict."""
        return asdict(self)


def store_batch(batch: CandleBatch, settings: Settings, overwrite: bool = False) -> SymbolReport:
    """Validate a batch and upsert it; a failing batch is quarantined and nothing is stored.

    The stored candles around the batch are its neighbours in the plausibility check, so a
    one-candle update is judged against the history it extends.

    Raises:
        BadDataError: naming the dataset, source file and rows, and the quarantine folder.
        CandleConflictError: the batch would change stored candles (and not ``overwrite``).
    """
    done = store_batches([batch], settings, overwrite)[0]
    if isinstance(done, Exception):
        raise done
    return done


def store_batches(
    batches: list[CandleBatch], settings: Settings, overwrite: bool = False
) -> list[SymbolReport | BadDataError]:
    """:func:`store_batch` for several batches, validated together in one GX run.

    Returns, per batch, its report, or the error that kept it out of the store (quarantined).

    Raises:
        CandleConflictError: a batch would change stored candles (and not ``overwrite``).
    """
    store = CandleStore(settings.store_dir)
    out: list[SymbolReport | BadDataError | None] = [None] * len(batches)
    todo = []
    for i, batch in enumerate(batches):
        if batch.raw.empty:
            log.warning("%s from %s: no candles in the input", batch.label, batch.source)
            out[i] = SymbolReport.from_upsert(
                batch, store.describe(batch.symbol, batch.interval, batch.market)
            )
        else:
            todo.append(i)
    checked = validate_batches([(batches[i], _stored_closes(store, batches[i])) for i in todo])
    for i, (frame, report) in zip(todo, checked, strict=True):
        batch = batches[i]
        if not report.success:
            folder = quarantine(batch, report, settings.quarantine_dir)
            out[i] = BadDataError(
                f"{batch.label} from {batch.source}: {len(report.failures)} check(s) failed, "
                f"nothing stored\n{report.summary()}",
                folder,
            )
            continue
        result = store.upsert(
            batch.symbol, batch.interval, batch.market, to_store_frame(frame), overwrite=overwrite
        )
        out[i] = SymbolReport.from_upsert(batch, result)
    return [done for done in out if done is not None]


def _stored_closes(store: CandleStore, batch: CandleBatch) -> pd.Series | None:
    """Stored closes (by open time, ms) within the plausibility window of the batch's range."""
    if "open_time" not in batch.raw:
        return None
    times = pd.to_numeric(batch.raw["open_time"], errors="coerce")
    if times.isna().all():
        return None
    times = times.where(times < 10**14, times // 1000)  # µs dumps
    pad = NEIGHBOURS * interval_ms(batch.interval)
    start = pd.Timestamp(int(times.min()) - pad, unit="ms", tz="UTC")
    end = pd.Timestamp(int(times.max()) + pad, unit="ms", tz="UTC")
    closes = store.read(batch.symbol, batch.interval, batch.market, start, end)["close"]
    if closes.empty:
        return None
    return pd.Series(closes.to_numpy(), index=(closes.index.astype("int64") // 1_000_000).to_numpy())


def ingest_files(
    symbol: str,
    interval: str,
    market: str,
    paths: list[Path],
    source: str,
    settings: Settings,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    overwrite: bool = False,
) -> SymbolReport:
    """Read one dataset's files (any order, overlapping), validate and store them.

    Only candles with ``start <= open_time <= end`` are taken; rows whose open time does
    not parse are kept so validation names them.
    """
    raw = _in_range(combine_files(read_candle_file(p) for p in paths), start, end)
    names = ", ".join(str(p) for p in paths[:3]) + (f" (+{len(paths) - 3} files)" if len(paths) > 3 else "")
    return store_batch(CandleBatch(symbol, interval, market, f"{source}: {names}", raw), settings, overwrite)


def _in_range(raw: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.DataFrame:
    if (start is None and end is None) or "open_time" not in raw:
        return raw
    times = coerce_numeric(raw[["open_time"]])[0]["open_time"]
    keep = times.isna()
    keep |= times.between(
        to_ms(start) if start is not None else -np.inf, to_ms(end) if end is not None else np.inf
    )
    return raw[keep].reset_index(drop=True)


def fetch_ranges(
    store: CandleStore,
    symbol: str,
    interval: str,
    market: str,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    default_lookback_days: int,
) -> list[tuple[int, int | None]]:
    """Open-time ranges (ms, inclusive; None = up to now) still missing from the store.

    Empty store: from ``start`` (default: ``default_lookback_days`` ago). Otherwise
    incremental from the newest stored candle, plus a backfill before the oldest one when
    ``start`` lies earlier.
    """
    step = interval_ms(interval)
    end_ms = to_ms(end) if end is not None else None
    stored = store.time_range(symbol, interval, market)
    if stored is None:
        start_ms = to_ms(start) if start is not None else now_ms() - default_lookback_days * 86_400_000
        return [(start_ms - start_ms % step, end_ms)]
    first, last = to_ms(stored[0]), to_ms(stored[1])
    ranges: list[tuple[int, int | None]] = []
    if start is not None and to_ms(start) < first:
        before_first = first - step if end_ms is None else min(first - step, end_ms)
        if to_ms(start) <= before_first:
            ranges.append((to_ms(start) - to_ms(start) % step, before_first))
    if end_ms is None or end_ms > last:
        ranges.append((last + step, end_ms))
    return ranges


def fetch_binance(
    symbol: str,
    interval: str,
    market: str,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    settings: Settings,
    source: BinanceKlineSource | None = None,
    server_now_ms: int | None = None,
) -> CandleBatch:
    """The closed candles of one symbol the store still lacks (backfill and/or update), unvalidated.

    ``server_now_ms``: the venue's clock, read once by the caller for many symbols (else per request).
    """
    source = source or BinanceKlineSource(settings, market)
    store = CandleStore(settings.store_dir)
    key = f"{symbol} {interval}"
    pieces = [
        source.klines(
            symbol,
            interval,
            lo,
            hi,
            progress=lambda d, t: progress.report(key, d, t),
            server_now_ms=server_now_ms,
        ).raw
        for lo, hi in fetch_ranges(
            store, symbol, interval, market, start, end, settings.default_lookback_days
        )
    ]
    raw = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    if pieces:
        raw["source_row"] = range(1, len(raw) + 1)
    return CandleBatch(symbol, interval, market, f"binance {market}", raw)


def ingest_binance(
    symbol: str,
    interval: str,
    market: str,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    settings: Settings,
    source: BinanceKlineSource | None = None,
    overwrite: bool = False,
) -> SymbolReport:
    """Backfill and/or update one symbol from Binance (closed candles only), then store."""
    batch = fetch_binance(symbol, interval, market, start, end, settings, source)
    return store_batch(batch, settings, overwrite)
