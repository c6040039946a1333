"""Backtest benchmark: 1,000,000 bars (10 symbols × 100,000) from P(up) to metrics, with fees.

Times the policy (P(up) → positions) and the portfolio backtest (costs, equity, trades,
metrics) separately and together, and the plain per-bar Python loop that the tests use
as the independent reference (tests/test_backtest.py). Synthetic returns and P(up),
seeded. Prints a table and writes bench/results/backtest.json.

    .venv/bin/python bench/backtest.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tasks.backtest import Costs, Policy, backtest, policy_positions  # noqa: E402
from tests.test_backtest import reference_loop  # noqa: E402

SYMBOLS, BARS = 10, 100_000
H = pd.Timedelta(hours=1)


def data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    frames = []
    for k in range(SYMBOLS):
        frames.append(
            pd.DataFrame(
                {
                    "symbol": f"S{k:02d}USDT",
                    "open_time": pd.date_range("2010-01-01", periods=BARS, freq="h", tz="UTC"),
                    "target_log_return": rng.normal(0, 0.01, BARS),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    # A slightly informative P(up), so the policy trades, holds and flips.
    signal = np.sign(frame["target_log_return"].to_numpy()) * 0.005
    p_up = pd.Series(np.clip(0.5 + signal + rng.normal(0, 0.1, len(frame)), 0.01, 0.99), index=frame.index)
    return frame, p_up


def timed(fn, repeats: int = 5) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    out = fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def main() -> None:
    frame, p_up = data()
    costs, policy = Costs(), Policy()
    abs_return = {s: 0.008 for s in frame["symbol"].unique()}
    t_policy, pos = timed(lambda: policy_positions(frame, p_up, policy, costs, abs_return))
    t_backtest, result = timed(lambda: backtest(frame, pos, costs, H))  # type: ignore[arg-type]
    began = time.perf_counter()
    reference = reference_loop(frame, p_up, policy, costs, abs_return)
    t_loop = time.perf_counter() - began
    ours = result.equity.to_numpy()  # type: ignore[attr-defined]
    diff = float(np.max(np.abs(ours / reference.to_numpy() - 1)))
    final = float(ours[-1])
    rows = [
        ("policy: P(up) → positions", t_policy),
        ("backtest: costs, equity, trades, metrics", t_backtest),
        ("together", t_policy + t_backtest),
        ("plain per-bar Python loop (reference)", t_loop),
    ]
    table = Table(title=f"Backtest of {SYMBOLS * BARS:,} bars with fees ({os.cpu_count()} cores)")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.3f}")
    Console().print(table)
    trades = result.metrics["trades"]  # type: ignore[attr-defined]
    note = f"max |equity / reference - 1| = {diff:.2e}; trades {trades:.0f}; final equity {final:.3g}"
    print(note, file=sys.stderr)
    out = ROOT / "bench" / "results" / "backtest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out.write_text(
        json.dumps(
            {"machine": machine, "bars": SYMBOLS * BARS, "seconds": dict(rows), "max_rel_equity_diff": diff},
            indent=2,
        )
    )
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
