"""Where data that fails goes: quarantined batches, and stored datasets checked again.

A batch that fails validation is written to the quarantine folder as it was read, with a
report, and nothing of it is stored. ``qt validate`` runs the suites over stored datasets;
with ``--repair`` a damaged or failing file is moved aside into quarantine (nothing is
deleted) so the dataset can be ingested again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from core.candles import from_store_frame, interval_ms
from core.timeutil import now_ms
from tasks.batch import CandleBatch
from tasks.validate import ValidationReport, validate_batch

log = logging.getLogger(__name__)


def quarantine(batch: CandleBatch, report: ValidationReport, quarantine_dir: Path) -> Path:
    """Write a failing batch and a readable report under ``quarantine_dir``; return the folder.

    The batch is written as it was read (raw values, origin columns), so nothing is lost.
    """
    stamp = pd.Timestamp(now_ms(), unit="ms", tz="UTC").strftime("%Y%m%dT%H%M%S%fZ")
    folder = quarantine_dir / f"{stamp}_{batch.market}_{batch.symbol}_{batch.interval}"
    folder.mkdir(parents=True, exist_ok=True)
    batch.raw.to_csv(folder / "batch.csv", index=False)
    payload = {
        "dataset": report.label,
        "source": report.source,
        "rows": report.rows,
        "failures": [
            {
                "expectation": f.expectation,
                "columns": list(f.columns),
                "unexpected_count": f.unexpected_count,
                "rows": list(f.rows),
            }
            for f in report.failures
        ],
    }
    (folder / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    lines = [f"# Rejected batch: {report.label}", "", f"source: {report.source}", f"rows: {report.rows}", ""]
    lines += [f"- {f.describe()}" for f in report.failures]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    log.warning("quarantined %s (%d rows) in %s", report.label, report.rows, folder)
    return folder


def validate_stored(
    store_frame: pd.DataFrame, symbol: str, interval: str, market: str, source: str
) -> ValidationReport:
    """Run the suites over a dataset already in the store (``qt validate``).

    Args:
        store_frame: the dataset as ``CandleStore.read`` returns it.
        symbol: its symbol.
        interval: its interval.
        market: its market.
        source: how messages name it (its file); rows are numbered from 1 in time order.
    """
    raw = from_store_frame(store_frame)
    raw["source_file"] = source
    raw["source_row"] = range(1, len(raw) + 1)
    return validate_batch(CandleBatch(symbol, interval, market, source, raw))[1]


def validate_store(
    store: Any, symbols: list[str] | None, interval: str, market: str, repair_to: Path | None = None
) -> dict[str, Any]:
    """Validate every chosen stored dataset (``qt validate`` and the training flow).

    Args:
        store: the :class:`~tasks.store.CandleStore`.
        symbols: the datasets to check (default: every stored one).
        interval: their interval.
        market: their market.
        repair_to: ``qt validate --repair``: move each damaged or failing dataset file into
            a folder under this quarantine root (with a report) instead of failing, so the
            dataset can be ingested again from its source. Nothing is deleted.

    Returns:
        ``{"interval", "market", "datasets": {SYM: {"rows", "success", "gaps",
        "missing_candles", "failures"}}, "repaired": {SYM: {"file", "problem", "moved_to"}}}``.

    Raises:
        BadConfigError: nothing stored for the interval/market, or for a chosen symbol.
        BadDataError: a dataset failed (and no ``repair_to``), naming the symbol and each
            failed check; a damaged file as :class:`~core.errors.DamagedStoreError`.
    """
    from core.candles import count_gaps
    from core.errors import BadConfigError, BadDataError, DamagedStoreError

    chosen = symbols or store.symbols(interval, market)
    if not chosen:
        raise BadConfigError(f"no stored {interval} {market} candles under {store.root}; run qt ingest first")
    datasets: dict[str, Any] = {}
    repaired: dict[str, Any] = {}
    for symbol in chosen:
        path = store.path(symbol, interval, market)
        try:
            frame = store.read(symbol, interval, market)
        except DamagedStoreError as err:
            if repair_to is None:
                raise
            repaired[symbol] = _move_aside(path, err.problem, repair_to, market, symbol, interval)
            continue
        if frame.empty:
            raise BadConfigError(f"{symbol} {interval} {market}: nothing stored; run qt ingest first")
        gaps, missing = count_gaps(frame.index, interval_ms(interval))
        report = validate_stored(frame, symbol, interval, market, str(path))
        if not report.success and repair_to is not None:
            problem = "failed validation: " + "; ".join(f.describe() for f in report.failures)
            repaired[symbol] = _move_aside(path, problem, repair_to, market, symbol, interval)
            continue
        datasets[symbol] = {
            "rows": report.rows,
            "success": report.success,
            "gaps": gaps,
            "missing_candles": missing,
            "failures": [f.describe() for f in report.failures],
        }
    failed = {s: d for s, d in datasets.items() if not d["success"]}
    if failed:
        detail = "\n".join(f"{s}: " + "; ".join(d["failures"]) for s, d in failed.items())
        raise BadDataError(
            f"stored data failed validation:\n{detail}\n  `qt validate --repair` moves them aside"
        )
    return {"interval": interval, "market": market, "datasets": datasets, "repaired": repaired}


def _move_aside(
    path: Path, problem: str, root: Path, market: str, symbol: str, interval: str
) -> dict[str, str]:
    """Move a damaged dataset file (or folder) into quarantine with a report; nothing is deleted."""
    import shutil

    stamp = pd.Timestamp(now_ms(), unit="ms", tz="UTC").strftime("%Y%m%dT%H%M%S%fZ")
    folder = root / f"{stamp}_damaged_{market}_{symbol}_{interval}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    shutil.move(str(path), str(target))
    (folder / "report.md").write_text(
        f"# Damaged store file: {symbol} {interval} {market}\n\nfile: {path}\nproblem: {problem}\n\n"
        f"Moved here by `qt validate --repair`; ingest the dataset again to rebuild it.\n"
    )
    log.info("moved damaged %s to %s (%s)", path, target, problem)
    return {"file": str(path), "problem": problem, "moved_to": str(target)}
