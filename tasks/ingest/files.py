"""Binance public data-dump files (CSV or ZIP, monthly/daily) and the shared CSV layout.

The symbol and interval come from the file name (``BTCUSDT-1h.csv``,
``BTCUSDT-1h-2024-01.zip``, ``BTCUSDT-1h-2024-01-05.csv``) unless the caller gives them.
Files may have a header row or not, and carry open times in ms or µs (spot dumps since
2025 use µs); overlapping files are merged, identical rows from two files kept once.
"""

from __future__ import annotations

import glob
import io
import re
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from core.candles import KLINE_COLUMNS, check_symbol, interval_ms
from core.errors import BadConfigError, BadDataError

_NAME_RE = re.compile(r"^(?P<symbol>[A-Z0-9]+)-(?P<interval>\d+[smhdwM])(?:-[^.]*)?\.(?:csv|zip)$")
#: Header names used by Binance dumps and freqtrade exports, mapped to ours.
_HEADER_ALIASES = {
    "count": "trades",
    "number_of_trades": "trades",
    "taker_buy_volume": "taker_buy_base",
    "taker_buy_base_asset_volume": "taker_buy_base",
    "taker_buy_quote_volume": "taker_buy_quote",
    "taker_buy_quote_asset_volume": "taker_buy_quote",
    "quote_asset_volume": "quote_volume",
}
_POSITIONAL = (*KLINE_COLUMNS, "ignore")


def expand_paths(paths: Sequence[str]) -> list[Path]:
    """Files named by ``--path`` values: files, directories (their CSV/ZIP files) or globs.

    Raises:
        BadConfigError: a path does not exist or a glob matches nothing (naming it).
    """
    found: list[Path] = []
    for raw in paths:
        if any(ch in raw for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(raw, recursive=True))
            if not matches:
                raise BadConfigError(f"--path {raw!r}: the pattern matches no file")
            found.extend(p for p in matches if p.is_file())
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".zip"))
            if not files:
                raise BadConfigError(f"--path {raw!r}: the folder holds no .csv or .zip file")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise BadConfigError(f"--path {raw!r}: no such file or folder")
    return list(dict.fromkeys(found))


def name_of(path: Path) -> tuple[str, str] | None:
    """``(symbol, interval)`` from a Binance dump file name, or None if it is not one."""
    match = _NAME_RE.match(path.name)
    return (match.group("symbol"), match.group("interval")) if match else None


def read_candle_file(path: Path) -> pd.DataFrame:
    """Read one CSV/ZIP into raw kline columns plus ``source_file`` and ``source_row``.

    ``source_row`` is the 1-based line number in the CSV (the header, if any, is line 1).

    Raises:
        BadDataError: the file cannot be read as CSV (naming the file).
    """
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith(".csv")]
                if len(members) != 1:
                    raise BadDataError(f"{path}: expected one .csv inside the zip, found {members}")
                text = archive.read(members[0]).decode()
        else:
            text = path.read_text()
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as err:
        raise BadDataError(f"{path}: cannot read ({err})") from err
    return _parse_csv(text, str(path))


def _parse_csv(text: str, source: str) -> pd.DataFrame:
    first_line = text.split("\n", 1)[0]
    first_field = first_line.split(",", 1)[0].strip().strip('"')
    has_header = bool(first_field) and not first_field.lstrip("-").replace(".", "", 1).isdigit()
    try:
        if has_header:
            frame = pd.read_csv(io.StringIO(text))
            frame.columns = [_HEADER_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in frame.columns]
        else:
            frame = pd.read_csv(io.StringIO(text), header=None)
            if frame.shape[1] > len(_POSITIONAL):
                raise BadDataError(f"{source}: {frame.shape[1]} columns, expected at most {len(_POSITIONAL)}")
            frame.columns = list(_POSITIONAL[: frame.shape[1]])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BadDataError(f"{source}: not a readable CSV ({err})") from err
    frame = frame[[c for c in frame.columns if c in KLINE_COLUMNS]]
    frame["source_file"] = source
    frame["source_row"] = range(2 if has_header else 1, len(frame) + (2 if has_header else 1))
    return frame


def combine_files(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate one dataset's files in time order, keeping rows repeated across files once.

    A row repeated *within* one file, or two files disagreeing about the same open time,
    is left in place for validation to reject.
    """
    ordered = sorted(frames, key=lambda f: _first_time(f))
    if not ordered:
        raise ValueError("combine_files needs at least one frame")
    combined = pd.concat(ordered, ignore_index=True)
    if len(ordered) == 1:
        return combined
    values = [c for c in KLINE_COLUMNS if c in combined]
    row_hash = pd.util.hash_pandas_object(combined[values].astype(str), index=False)
    first_file = combined.groupby(row_hash.to_numpy())["source_file"].transform("first")
    cross_file_repeat = row_hash.duplicated().to_numpy() & (combined["source_file"] != first_file).to_numpy()
    return combined[~cross_file_repeat].reset_index(drop=True)


def _first_time(frame: pd.DataFrame) -> float:
    if "open_time" not in frame or frame.empty:
        return float("inf")
    first = pd.to_numeric(frame["open_time"].iloc[0], errors="coerce")
    return float("inf") if pd.isna(first) else float(first if first < 10**14 else first / 1000)


def group_files(
    paths: Sequence[Path], symbols: Sequence[str] | None, interval: str | None
) -> dict[tuple[str, str], list[Path]]:
    """Group files by the (symbol, interval) dataset they belong to; reads no file.

    A file whose name carries no symbol/interval takes them from ``symbols`` (exactly one)
    and ``interval``; files whose names do are filtered by the given ones.

    Raises:
        BadConfigError: a file's symbol or interval cannot be determined, or nothing is left.
    """
    wanted = {check_symbol(s) for s in symbols} if symbols else None
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path in paths:
        parsed = name_of(path)
        if parsed is None:
            if not (wanted and len(wanted) == 1 and interval):
                raise BadConfigError(
                    f"{path}: cannot tell symbol and interval from the name (expected like "
                    "BTCUSDT-1h.csv or BTCUSDT-1h-2024-01.zip); give one --symbols and --interval"
                )
            parsed = (next(iter(wanted)), interval)
        interval_ms(parsed[1])
        if (wanted is None or parsed[0] in wanted) and (interval is None or parsed[1] == interval):
            groups[parsed].append(path)
    if not groups:
        raise BadConfigError(f"no file matches symbols={sorted(wanted or [])} interval={interval}")
    return dict(sorted(groups.items()))
