"""Feature benchmark: full feature set on the 10 shared 1h files and BTC 5m, vs TA-Lib.

Our recursive indicators *are* TA-Lib's C functions, called on contiguous float64 arrays;
the comparison shows what our path (store frame → arrays → indicators) costs on top of
calling TA-Lib directly on arrays, and what the full 64-column feature set costs.
Prints a table and writes bench/results/features.json. Needs ../shared/data/binance.

    .venv/bin/python bench/features.py
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import talib  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import write_results  # noqa: E402
from core.candles import to_store_frame  # noqa: E402
from tasks.features import FeatureSpec, feature_matrix, symbol_features  # noqa: E402
from tasks.features.groups import Candles  # noqa: E402
from tasks.ingest.files import read_candle_file  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "binance"
REPEATS = 15


def median_s(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm caches
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def talib_reference_set(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> None:
    """RSI, EMA 10/50, MACD, ATR, BBANDS, ADX — called directly on arrays."""
    talib.RSI(c, 14)
    talib.EMA(c, 10)
    talib.EMA(c, 50)
    talib.MACD(c, 12, 26, 9)
    talib.ATR(h, lo, c, 14)
    talib.BBANDS(c, 20, 2.0, 2.0, 0)
    talib.ADX(h, lo, c, 14)


def ours_reference_set(frame: pd.DataFrame) -> None:
    """The same indicators through our path: store frame → Candles → TA-Lib."""
    v = Candles.from_frame(frame)
    talib_reference_set(v.high, v.low, v.close)


def main() -> int:
    files = sorted(SHARED.glob("*-1h.csv"))
    if len(files) != 10:
        print(f"skipped: needs the 10 1h files of {SHARED} (found {len(files)})", file=sys.stderr)
        return 0
    hourly = {p.name.split("-")[0]: to_store_frame(read_candle_file(p)) for p in files}
    arrays = {
        s: (f["high"].to_numpy(), f["low"].to_numpy(), f["close"].to_numpy()) for s, f in hourly.items()
    }
    btc_5m = to_store_frame(read_candle_file(SHARED / "BTCUSDT-5m.csv"))
    rows_1h = sum(len(f) for f in hourly.values())

    talib_s = median_s(lambda: [talib_reference_set(*a) for a in arrays.values()])
    ours_s = median_s(lambda: [ours_reference_set(f) for f in hourly.values()])
    full_1h_s = median_s(lambda: [symbol_features(f) for f in hourly.values()], repeats=5)
    matrix_s = median_s(lambda: feature_matrix(hourly, 3_600_000), repeats=3)
    full_5m_s = median_s(lambda: symbol_features(btc_5m), repeats=5)
    n_features = symbol_features(hourly["BTCUSDT"]).shape[1]

    results = {
        "rows_1h": rows_1h,
        "rows_btc_5m": len(btc_5m),
        "talib_reference_set_ms": round(talib_s * 1000, 2),
        "ours_reference_set_ms": round(ours_s * 1000, 2),
        "ratio_ours_to_talib": round(ours_s / talib_s, 3),
        "full_feature_set_1h_ms": round(full_1h_s * 1000, 1),
        "features_per_symbol": n_features,
        "feature_matrix_1h_with_btc_and_targets_ms": round(matrix_s * 1000, 1),
        "full_feature_set_btc_5m_ms": round(full_5m_s * 1000, 1),
        "min_history_1h": FeatureSpec().min_history,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    table = Table(
        title=f"Feature benchmark (median of repeats; {rows_1h:,} 1h rows, 10 symbols)", title_justify="left"
    )
    table.add_column("measure")
    table.add_column("time", justify="right")
    table.add_row("TA-Lib direct: RSI, EMA10/50, MACD, ATR, BBANDS, ADX", f"{talib_s * 1000:.1f} ms")
    table.add_row(
        "same set through our path (frame → arrays → TA-Lib)",
        f"{ours_s * 1000:.1f} ms  (ratio {ours_s / talib_s:.2f})",
    )
    table.add_row(f"full feature set, {n_features} columns, 10 × 1h", f"{full_1h_s * 1000:.0f} ms")
    table.add_row("feature matrix 10 × 1h (+BTC cross-asset, targets)", f"{matrix_s * 1000:.0f} ms")
    table.add_row(f"full feature set, BTC 5m ({len(btc_5m):,} rows)", f"{full_5m_s * 1000:.0f} ms")
    Console().print(table)
    write_results("features", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
