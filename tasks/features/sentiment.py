"""Optional sentiment: a pluggable source of timestamped scores (e.g. exported from a feed).

The CSV has ``timestamp`` (ISO or epoch ms, UTC) and ``score`` columns, and optionally
``symbol`` (rows without one apply to every symbol). A candle sees the newest score
stamped at or before its close, never a later one. No source → no sentiment columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.errors import BadDataError

_EARLIEST = pd.Timestamp("2009-01-03", tz="UTC")  # the first bitcoin block


def load_sentiment(path: Path) -> pd.DataFrame:
    """Read and check a sentiment CSV: columns ``timestamp``, ``score`` [, ``symbol``].

    Raises:
        BadDataError: missing columns, unparseable timestamps or scores (naming the rows).
    """
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BadDataError(f"{path}: cannot read sentiment CSV ({type(err).__name__}: {err})") from err
    missing = {"timestamp", "score"} - set(frame.columns)
    if missing:
        raise BadDataError(f"{path}: sentiment CSV lacks column(s) {sorted(missing)}")
    stamps = frame["timestamp"]
    numeric = pd.to_numeric(stamps, errors="coerce")
    from_ms = pd.to_datetime(numeric, unit="ms", utc=True).astype("datetime64[ms, UTC]")
    text = stamps.where(numeric.isna()).astype(object)
    from_text = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601").astype(
        "datetime64[ms, UTC]"
    )
    parsed = from_ms.fillna(from_text)
    scores = pd.to_numeric(frame["score"], errors="coerce")
    # epoch seconds or YYYYMMDD read as ms land in 1970 and would leak later scores backwards
    plausible = parsed.between(_EARLIEST, pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1))
    bad = parsed.isna() | scores.isna() | ~plausible
    if bad.any():
        rows = ", ".join(str(i + 2) for i in frame.index[bad][:5])
        raise BadDataError(
            f"{path}: unparseable or implausible timestamp (expect UTC ISO or epoch ms after "
            f"{_EARLIEST.date()}) or score on line(s) {rows}"
        )
    out = pd.DataFrame({"timestamp": parsed.astype("datetime64[ms, UTC]"), "score": scores})
    out["symbol"] = frame["symbol"].astype(str) if "symbol" in frame else None
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def sentiment_for(scores: pd.DataFrame, symbol: str, open_time: pd.DatetimeIndex, step_ms: int) -> pd.Series:
    """The newest score at or before each candle's close, for one symbol (NaN before any)."""
    mine = scores[scores["symbol"].isna() | (scores["symbol"] == symbol)]
    mine = mine.assign(timestamp=mine["timestamp"].astype("datetime64[ms, UTC]"))
    close_time = pd.DataFrame(
        {"close_time": (open_time + pd.Timedelta(milliseconds=step_ms - 1)).astype("datetime64[ms, UTC]")}
    )
    merged = pd.merge_asof(
        close_time,
        mine[["timestamp", "score"]],
        left_on="close_time",
        right_on="timestamp",
        direction="backward",
    )
    return pd.Series(merged["score"].to_numpy(), index=open_time, name="sentiment_score")
