"""Parquet candle store: one file per (market, symbol, interval), UTC ``open_time`` index.

Writes are atomic (temp file in the same folder, fsync, rename, fsync the folder) and
serialised per dataset with a file lock, so a crash at any point leaves either the old or
the new file. Upserts are idempotent: re-ingesting rows already stored writes nothing.

Files of up to :data:`CACHED_FILE_BYTES` are kept in memory as read (or as just written)
while they stay the same file: a dataset is only ever replaced whole, so its inode, size and
modification time name its content. The live tick reads each symbol's file several times a
minute and writes it once; with the cache it reads it from disk only when another process
replaced it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.candles import KLINE_COLUMNS, check_market, count_gaps, empty_candles, interval_ms
from core.errors import DamagedStoreError

_VALUE_COLUMNS = list(KLINE_COLUMNS[1:])
#: Dataset files up to this size on disk (≈ 150,000 candles) are cached in memory as read.
CACHED_FILE_BYTES = 8 * 2**20
#: Memory the cached frames may take together; the least recently used go first.
CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert changed and what the dataset now holds."""

    rows_added: int
    rows_updated: int
    rows_total: int
    first_open_time: pd.Timestamp | None
    last_open_time: pd.Timestamp | None
    gaps: int
    missing_candles: int


class CandleStore:
    """The candle datasets under one folder (``<home>/store``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, symbol: str, interval: str, market: str = "spot") -> Path:
        """File of one dataset: ``<root>/<market>/<interval>/<SYMBOL>.parquet``."""
        return self.root / check_market(market) / interval / f"{symbol}.parquet"

    def symbols(self, interval: str, market: str = "spot") -> list[str]:
        """Symbols stored for an interval and market, sorted."""
        folder = self.root / check_market(market) / interval
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def read(
        self,
        symbol: str,
        interval: str,
        market: str = "spot",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Candles of one dataset with ``start <= open_time <= end``, indexed by ``open_time``.

        A dataset that does not exist reads as an empty frame with the store's dtypes.

        Raises:
            DamagedStoreError: the file is not what the store writes (unreadable, a folder,
                columns missing, duplicate or unsorted open times), naming it.
        """
        path = self.path(symbol, interval, market)
        identity = _identity(path)
        if identity is None:
            return empty_candles()
        frame = _CACHE.get(path, identity)
        if frame is None and identity[1] > CACHED_FILE_BYTES:  # large: read only the rows asked for
            return _load(path, _time_filters(start, end))
        if frame is None:
            frame = _load(path, None)
            _CACHE.put(path, identity, frame)
        return frame.loc[start:end].copy()

    def read_many(
        self,
        symbols: Sequence[str],
        interval: str,
        market: str = "spot",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Candles of many symbols in one frame indexed by ``(symbol, open_time)``.

        Files are read in parallel threads (pyarrow releases the GIL).
        """
        if not symbols:
            raise ValueError("read_many needs at least one symbol")
        with ThreadPoolExecutor(max_workers=min(8, len(symbols))) as pool:
            frames = list(pool.map(lambda s: self.read(s, interval, market, start, end), symbols))
        return pd.concat(frames, keys=list(symbols), names=["symbol", "open_time"])

    def upsert(
        self, symbol: str, interval: str, market: str, candles: pd.DataFrame, *, overwrite: bool = False
    ) -> UpsertResult:
        """Merge validated candles (store layout, see ``core.candles.to_store_frame``).

        New open times are added; a stored value that is missing (a source without the
        optional columns) is filled in; nothing else is touched. A stored candle whose
        values would *change* is a conflict: refused naming both values, unless
        ``overwrite`` (the exchange corrected a candle and the user says so). When nothing
        changes the file is not rewritten.

        Raises:
            CandleConflictError: stored candles would change and ``overwrite`` is False.
        """
        path = self.path(symbol, interval, market)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            stored = self.read(symbol, interval, market)
            incoming = candles[_VALUE_COLUMNS]
            if len(incoming) and (stored.empty or incoming.index.min() > stored.index[-1]):
                merged = pd.concat([stored, incoming.sort_index()]) if len(stored) else incoming.sort_index()
                _atomic_write(merged, path)  # the live tick's case: new candles after the stored ones
                return _summarise(merged, interval, len(incoming), 0)
            is_new = ~incoming.index.isin(stored.index)
            overlap = incoming.index[~is_new]
            if not overwrite:
                _refuse_conflicts(stored.loc[overlap], incoming.loc[overlap], f"{symbol} {interval} {market}")
            # a source without the optional columns (public files) must not erase stored ones
            incoming = pd.concat(
                [incoming[is_new], incoming.loc[overlap].fillna(stored.loc[overlap])]
            ).sort_index()
            changed = _changed_rows(stored.loc[overlap], incoming.loc[overlap])
            rows_added, rows_updated = int(is_new.sum()), int(changed)
            if rows_added or rows_updated:
                merged = pd.concat([stored[~stored.index.isin(overlap)], incoming]).sort_index()
                _atomic_write(merged, path)
            else:
                merged = stored
        return _summarise(merged, interval, rows_added, rows_updated)

    def describe(self, symbol: str, interval: str, market: str = "spot") -> UpsertResult:
        """What a dataset holds, as an upsert that changed nothing would report it."""
        return _summarise(self.read(symbol, interval, market), interval, 0, 0)

    def time_range(
        self, symbol: str, interval: str, market: str = "spot"
    ) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """Oldest and newest stored open time (reads that column only); None when empty."""
        path = self.path(symbol, interval, market)
        identity = _identity(path)
        if identity is None:
            return None
        cached = _CACHE.get(path, identity)
        if cached is not None:
            return (cached.index[0], cached.index[-1]) if len(cached) else None
        times = _read_table(path, columns=["open_time"]).column("open_time")
        if len(times) == 0:
            return None
        return pd.Timestamp(times[0].as_py()), pd.Timestamp(times[-1].as_py())


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime ns) of a dataset file, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


_Filters = list[tuple[str, str, pa.Scalar]]


def _time_filters(start: pd.Timestamp | None, end: pd.Timestamp | None) -> _Filters | None:
    ms = pa.timestamp("ms", tz="UTC")
    filters = [("open_time", ">=", pa.scalar(start, type=ms))] if start is not None else []
    filters += [("open_time", "<=", pa.scalar(end, type=ms))] if end is not None else []
    return filters or None


def _load(path: Path, filters: _Filters | None) -> pd.DataFrame:
    """A dataset file as a frame indexed by ``open_time``, checked as :meth:`CandleStore.read` says."""
    table = _read_table(path, filters=filters)
    missing = [c for c in KLINE_COLUMNS if c not in table.column_names]
    if missing:
        raise DamagedStoreError(path, f"columns missing: {', '.join(missing)}")
    frame = table.to_pandas().set_index("open_time")
    check_order(frame.index, path)
    return frame


class _FrameCache:
    """Frames of dataset files by path, each valid while its file has the same identity.

    Readers get copies (see :meth:`CandleStore.read`), so nothing outside changes a cached frame.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[Path, tuple[tuple[int, int, int], pd.DataFrame, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, identity: tuple[int, int, int]) -> pd.DataFrame | None:
        with self._lock:
            held = self._frames.get(path)
            if held is None or held[0] != identity:
                return None
            self._frames.move_to_end(path)
            return held[1]

    def put(self, path: Path, identity: tuple[int, int, int], frame: pd.DataFrame) -> None:
        size = int(frame.memory_usage(index=True, deep=False).sum())
        with self._lock:
            self._frames.pop(path, None)
            if size > self.max_bytes:
                return
            self._frames[path] = (identity, frame, size)
            while sum(held[2] for held in self._frames.values()) > self.max_bytes:
                self._frames.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()


_CACHE = _FrameCache(CACHE_BYTES)


def _read_table(path: Path, **options: object) -> pa.Table:
    """Read a dataset file, naming it when it is not a readable Parquet file."""
    if path.is_dir():
        raise DamagedStoreError(path, "a folder where the dataset file should be")
    try:
        return pq.read_table(path, **options)
    except (pa.ArrowException, OSError) as err:
        raise DamagedStoreError(path, f"not a readable Parquet file: {err}") from err


def check_order(index: pd.Index, path: Path) -> None:
    """Open times in the store are unique and increasing; anything else was written by another tool."""
    duplicated = index.duplicated()
    if duplicated.any():
        first = index[duplicated][0]
        raise DamagedStoreError(path, f"{int(duplicated.sum())} duplicate open_time rows (first {first})")
    if not index.is_monotonic_increasing:
        position = int((index[1:] < index[:-1]).argmax()) + 1
        raise DamagedStoreError(path, f"open_time not sorted (row {position + 1}: {index[position]})")


def _summarise(frame: pd.DataFrame, interval: str, added: int, updated: int) -> UpsertResult:
    gaps, missing = count_gaps(frame.index, interval_ms(interval))
    return UpsertResult(
        rows_added=added,
        rows_updated=updated,
        rows_total=len(frame),
        first_open_time=frame.index[0] if len(frame) else None,
        last_open_time=frame.index[-1] if len(frame) else None,
        gaps=gaps,
        missing_candles=missing,
    )


def _refuse_conflicts(old: pd.DataFrame, new: pd.DataFrame, label: str, shown: int = 3) -> None:
    """Raise naming stored and incoming values where both are known and differ."""
    from core.errors import CandleConflictError

    if old.empty:
        return
    differs = old.notna() & new.notna() & old.ne(new)
    rows = differs.any(axis=1)
    if not rows.any():
        return
    details = []
    for when in differs.index[rows][:shown]:
        cols = [str(c) for c in differs.columns[differs.loc[when]]]
        pairs = ", ".join(c + " " + str(old.at[when, c]) + " → " + str(new.at[when, c]) for c in cols)
        details.append(f"{pd.Timestamp(when):%Y-%m-%dT%H:%MZ}: {pairs}")
    more = f" (+{int(rows.sum()) - shown} more)" if rows.sum() > shown else ""
    raise CandleConflictError(
        f"{label}: {int(rows.sum())} stored candle(s) would change, nothing written: "
        + "; ".join(details)
        + more
        + "\n  pass --overwrite if the source corrected them"
    )


def _changed_rows(old: pd.DataFrame, new: pd.DataFrame) -> int:
    """How many aligned rows differ in any value (null equals null)."""
    if old.empty:
        return 0
    same = old.eq(new).fillna(False).astype(bool) | (old.isna() & new.isna())
    return int((~same.all(axis=1)).sum())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on a dataset, held for a whole read-merge-write."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(frame: pd.DataFrame, path: Path) -> None:
    """Replace a dataset file; called under its lock, so a crashed writer's temp files can go."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    table = write_parquet_atomic(frame.reset_index(), path)
    identity = _identity(path)
    if identity is not None and identity[1] <= CACHED_FILE_BYTES:
        _CACHE.put(path, identity, table.to_pandas().set_index("open_time"))  # what a read would give


def check_writable(path: Path, field: str) -> None:
    """Fail before any work when ``path`` cannot be written as a file (naming ``field``).

    Creates missing parent folders (the write would) and probes the folder with a file.

    Raises:
        BadConfigError: ``path`` is a folder, a parent is a file, or the folder refuses writes.
    """
    from core.errors import BadConfigError

    if path.is_dir():
        raise BadConfigError(f"{field} {path}: is a folder; give a file name like features.parquet")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise BadConfigError(
            f"{field} {path}: cannot write there ({err.strerror or err}: {err.filename or path.parent})"
        ) from err


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> pa.Table:
    """Write ``frame`` (its columns, not its index) so readers see the old or the new file only.

    Temp file in the same folder, fsync, rename over ``path``, fsync the folder. Returns the
    Arrow table written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd", row_group_size=64_000)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return table
