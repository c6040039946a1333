"""Great Expectations checks for candle batches (failing ones go to :mod:`tasks.quarantine`).

Two suites run in order: ``schema`` (required columns present), then ``ohlcv`` (types,
nulls, price/volume ranges, OHLC consistency, unique increasing aligned timestamps,
``close_time = open_time + interval - 1 ms``). Gaps are counted, not rejected: exchanges
have maintenance windows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pandas as pd

from core.candles import (
    FLOAT_COLUMNS,
    OPTIONAL_COLUMNS,
    PRICE_COLUMNS,
    REQUIRED_COLUMNS,
    interval_ms,
)
from core.timeutil import ms_to_iso, now_ms
from tasks.batch import ORIGIN_COLUMNS, CandleBatch, coerce_numeric

log = logging.getLogger(__name__)
_MAX_ROWS_IN_REPORT = 20
#: Plausibility: each price of a candle must lie within a factor ``PLAUSIBLE_FACTOR`` of
#: the median close of its ``NEIGHBOURS`` candles on either side (stored ones included). A
#: real market never leaves a 10× band around its own day-long median within one candle
#: (the shared 10 pairs, 1h and 5m, 2020–2025, stay within 1.9×); a typo or an overflow does.
NEIGHBOURS = 12
PLAUSIBLE_FACTOR = 10.0
_gx_lock = threading.Lock()  # GX's ephemeral context is not documented as thread-safe


@dataclass(frozen=True)
class Failure:
    """One failed expectation: what was expected, and the rows that broke it."""

    expectation: str
    columns: tuple[str, ...]
    unexpected_count: int
    rows: tuple[dict[str, Any], ...]

    def describe(self) -> str:
        """``high >= low: 1 row (line 5 ...)`` for error messages."""
        where = "; ".join(_describe_row(row) for row in self.rows[:3])
        more = f" (+{self.unexpected_count - 3} more)" if self.unexpected_count > 3 else ""
        rows = f": {where}{more}" if where else ""
        noun = "row" if self.unexpected_count == 1 else "rows"
        count = f"{self.unexpected_count} {noun}" if self.unexpected_count else "failed"
        return f"{self.expectation} [{', '.join(self.columns)}] {count}{rows}"


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of validating one batch."""

    label: str
    source: str
    rows: int
    failures: tuple[Failure, ...]

    @property
    def success(self) -> bool:
        """True when every expectation held."""
        return not self.failures

    def summary(self) -> str:
        """One line per failed expectation, naming the rows."""
        return "\n".join(f"  - {failure.describe()}" for failure in self.failures)


@lru_cache(maxsize=1)
def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX pins one module logger at INFO ("Created temporary directory ..."): keep it quiet
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


@lru_cache(maxsize=16)
def _suites(step_ms: int) -> tuple[Any, Any, Any]:
    """Batch definition plus the schema and value suites for one interval length."""
    import great_expectations as gx
    from great_expectations import expectations as gxe

    ctx = _context()
    name = f"candles_{step_ms}"
    batch_def = (
        ctx.data_sources.add_pandas(name)
        .add_dataframe_asset("candles")
        .add_batch_definition_whole_dataframe("whole")
    )
    schema = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_schema"))
    for col in REQUIRED_COLUMNS:
        schema.add_expectation(gxe.ExpectColumnToExist(column=col))

    values = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_ohlcv"))
    values.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="unparseable_fields", value_set=[""]))
    for col in REQUIRED_COLUMNS:
        values.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col))
    for col in ("open_time", "close_time"):
        values.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=["int64"]))
    for col in FLOAT_COLUMNS:
        values.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=["float64"]))
    for col in PRICE_COLUMNS:
        values.add_expectation(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, strict_min=True))
    for col in ("volume", *OPTIONAL_COLUMNS):  # nulls allowed in the optional ones, negatives never
        values.add_expectation(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0))
    for upper, lower in (("open", "low"), ("close", "low"), ("high", "open"), ("high", "close")):
        values.add_expectation(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=upper, column_B=lower, or_equal=True)
        )
    values.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="open_time"))
    values.add_expectation(gxe.ExpectColumnValuesToBeIncreasing(column="open_time", strictly=True))
    values.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="open_time_offset_ms", value_set=[0]))
    values.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="close_time_error_ms", value_set=[0]))
    values.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="closed", value_set=[True]))
    values.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="price_vs_neighbours", min_value=1 / PLAUSIBLE_FACTOR, max_value=PLAUSIBLE_FACTOR
        )
    )
    return batch_def, schema, values


def prepare(batch: CandleBatch, stored_closes: pd.Series | None = None) -> pd.DataFrame:
    """The numeric frame GX checks: coerced values, derived check columns, origin columns.

    ``stored_closes`` (close by open time in ms) are the stored neighbours of the batch.
    """
    frame = _prepare_columns(batch.raw, batch.interval)
    if all(col in frame for col in REQUIRED_COLUMNS):
        frame["price_vs_neighbours"] = _price_vs_neighbours(frame, stored_closes)
    return frame


def prepare_many(batches: Sequence[tuple[CandleBatch, pd.Series | None]]) -> list[pd.DataFrame]:
    """:func:`prepare` of each batch, the column work done once over all of them.

    The live tick's batches are a row or two per symbol: coercing them stacked costs one
    set of pandas calls per tick instead of one per symbol. Batches of different intervals
    or columns are prepared one by one.
    """
    raws = [batch.raw for batch, _ in batches]
    if (
        len(batches) < 2
        or len({b.interval for b, _ in batches}) > 1
        or len({tuple(r.columns) for r in raws}) > 1
    ):
        return [prepare(batch, closes) for batch, closes in batches]
    stacked = _prepare_columns(pd.concat(raws, keys=range(len(raws))), batches[0][0].interval)
    complete = all(col in stacked for col in REQUIRED_COLUMNS)
    frames = []
    for i, (_, closes) in enumerate(batches):
        frame = pd.DataFrame(stacked.xs(i, level=0)).copy()
        if complete:
            frame["price_vs_neighbours"] = _price_vs_neighbours(frame, closes)
        frames.append(frame)
    return frames


def _prepare_columns(raw: pd.DataFrame, interval: str) -> pd.DataFrame:
    """Everything :func:`prepare` derives row by row (all but the neighbours' check)."""
    frame, unparseable = coerce_numeric(raw)
    step = interval_ms(interval)
    for col in OPTIONAL_COLUMNS:  # public files may lack these; required ones must exist
        if col not in frame:
            frame[col] = float("nan")
    for col in FLOAT_COLUMNS:
        if col in frame:
            frame[col] = frame[col].astype("float64")
    frame["unparseable_fields"] = unparseable
    if all(col in frame for col in REQUIRED_COLUMNS):
        for col in ("open_time", "close_time"):
            if frame[col].notna().all():
                frame[col] = frame[col].astype("int64")
        frame["open_time_offset_ms"] = frame["open_time"] % step
        frame["close_time_error_ms"] = frame["close_time"] - frame["open_time"] - (step - 1)
        frame["closed"] = frame["close_time"] < now_ms()  # a candle still forming is not data yet
    return frame


def _price_vs_neighbours(frame: pd.DataFrame, stored_closes: pd.Series | None) -> pd.Series:
    """The price of each candle furthest from its neighbours' median close, as a ratio to it.

    1.0 where it cannot be judged (fewer than 7 neighbours known, a value missing): the
    other checks name those rows.
    """
    import numpy as np

    own = pd.Series(frame["close"].to_numpy(), index=frame["open_time"].to_numpy())
    own = own[own.index.notna() & (own > 0).to_numpy()]
    reference = (
        own
        if stored_closes is None
        else pd.concat([own, stored_closes[~stored_closes.index.isin(own.index)]])
    )
    reference = reference[~reference.index.duplicated()].sort_index()
    median = reference.rolling(2 * NEIGHBOURS + 1, center=True, min_periods=7).median()
    centre = median.reindex(frame["open_time"].to_numpy()).to_numpy()
    prices = frame[list(PRICE_COLUMNS)].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = prices / centre[:, None]
        log_dist = np.abs(np.log(ratios))
    worst = np.argmax(np.where(np.isfinite(log_dist), log_dist, -1.0), axis=1)
    picked = ratios[np.arange(len(frame)), worst]
    return pd.Series(np.where(np.isfinite(picked) & (picked > 0), picked, 1.0), index=frame.index)


def validate_batch(
    batch: CandleBatch, stored_closes: pd.Series | None = None
) -> tuple[pd.DataFrame, ValidationReport]:
    """Run the schema and value suites on a batch.

    Args:
        batch: the candles.
        stored_closes: stored closes by open time (ms) around the batch, for plausibility.

    Returns:
        The numeric frame (what gets stored when the report is a success) and the report.
    """
    frame = prepare(batch, stored_closes)
    step = interval_ms(batch.interval)
    with _gx_lock:
        batch_def, schema, values = _suites(step)
        failures = _run(batch_def, schema, frame)
        if not failures:
            failures = _run(batch_def, values, frame)
    report = ValidationReport(batch.label, batch.source, len(frame), tuple(failures))
    return frame, report


#: Added to each batch's open times when several are validated as one frame: keeps each
#: batch's own order and uniqueness, and no two batches' times can meet (10^15 ms ≈ 31,700 years).
_BATCH_OFFSET_MS = 10**15


def validate_batches(
    batches: Sequence[tuple[CandleBatch, pd.Series | None]],
) -> list[tuple[pd.DataFrame, ValidationReport]]:
    """Validate several batches (the live tick's new candles, one batch per symbol) in one GX run.

    The value suite runs once over the batches stacked, each batch's open times shifted by
    its own offset, so an expectation that holds on the stack holds on every batch (each is
    row-wise, or per column with order and uniqueness kept within a batch); the stack is
    only formed when every required column is there, which is all the schema suite checks.
    When the stack fails, or the batches differ in interval or columns, each batch is
    validated on its own, so a failure is reported exactly as :func:`validate_batch` does.

    Args:
        batches: each batch with its stored closes around it (for plausibility).
    """
    if len(batches) < 2:
        return [validate_batch(batch, closes) for batch, closes in batches]
    frames = prepare_many(batches)
    alike = len({b.interval for b, _ in batches}) == 1 and len({tuple(f.columns) for f in frames}) == 1
    complete = all(
        col in frames[0] for col in REQUIRED_COLUMNS
    )  # else the schema suite names what is missing
    if alike and complete and all(pd.api.types.is_integer_dtype(f["open_time"]) for f in frames):
        shifted = [f.assign(open_time=f["open_time"] + i * _BATCH_OFFSET_MS) for i, f in enumerate(frames)]
        stacked = pd.concat(shifted, ignore_index=True)
        with _gx_lock:
            batch_def, _, values = _suites(interval_ms(batches[0][0].interval))
            failures = _run(batch_def, values, stacked, rows=False)  # the columns are there: checked above
        if not failures:
            return [
                (frame, ValidationReport(batch.label, batch.source, len(frame), ()))
                for (batch, _), frame in zip(batches, frames, strict=True)
            ]
    return [validate_batch(batch, closes) for batch, closes in batches]


def _run(batch_def: Any, suite: Any, frame: pd.DataFrame, rows: bool = True) -> list[Failure]:
    """The suite's failures on ``frame``.

    ``rows=False``: which expectations failed, without counting or naming the rows (GX's
    ``BOOLEAN_ONLY``, less than half the time of ``COMPLETE`` on a live tick's batches).
    """
    detailed = {"result_format": "COMPLETE", "unexpected_index_column_names": list(ORIGIN_COLUMNS)}
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format=detailed if rows else {"result_format": "BOOLEAN_ONLY"}
    )
    failures = []
    for res in result.results:
        if res.success:
            continue
        kwargs = res.expectation_config.kwargs
        columns = tuple(str(kwargs[k]) for k in ("column", "column_A", "column_B") if k in kwargs)
        detail = res.result or {}
        listed = detail.get("unexpected_index_list", [])[:_MAX_ROWS_IN_REPORT] if rows else []
        named = tuple(_clean_row(row, frame) for row in listed)
        failures.append(
            Failure(
                expectation=res.expectation_config.type,
                columns=columns,
                unexpected_count=int(detail.get("unexpected_count", 0) or 0),
                rows=named,
            )
        )
    return failures


def _clean_row(row: dict[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    """JSON-friendly row description with its origin and the open time it claims."""
    clean: dict[str, Any] = {}
    for key, value in row.items():
        clean[key] = value.item() if hasattr(value, "item") else value
    match = frame[
        (frame["source_file"] == clean.get("source_file")) & (frame["source_row"] == clean.get("source_row"))
    ]
    if len(match) and "open_time" in match and pd.notna(match["open_time"].iloc[0]):
        clean.setdefault("open_time", ms_to_iso(int(match["open_time"].iloc[0])))
    return clean


def _describe_row(row: dict[str, Any]) -> str:
    origin = f"{row.get('source_file')} row {row.get('source_row')}"
    values = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ORIGIN_COLUMNS)
    return f"{origin} ({values})" if values else origin
