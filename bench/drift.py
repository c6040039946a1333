"""How often the supervisor's drift check fires on ordinary weeks: the plain and the relative PSI rule.

On the bundled sample (5 pairs, 1h), for a 168-bar window after each of ten month-ends
(2024-09 → 2025-06), the share of features whose PSI against the bars before exceeds 0.25
(720 and 2,160 bars of reference), and the share that also exceed their own largest PSI
over the 90-day reference's one-week windows — the rule :func:`serving.supervisor.usual_drift`
applies. Prints a table and writes bench/results/drift.json. Needs only the sample.

    .venv/bin/python bench/drift.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import write_results  # noqa: E402

HOUR = pd.Timedelta(hours=1)
WINDOW = 168


def main() -> None:
    """One row per month-end: the drifted share under each rule."""
    from core.settings import load_settings
    from serving.supervisor import Limits, drift, usual_drift
    from tasks.features.dataset import features_from_store
    from tasks.ingest import ingest_files
    from tasks.ingest.sample import sample_paths
    from tasks.store import CandleStore

    settings = load_settings(Path(tempfile.mkdtemp(prefix="qt-drift-")))
    for path in sample_paths(None, "1h"):
        ingest_files(path.name.split("-")[0], "1h", "spot", [path], "sample", settings)
    matrix = features_from_store(CandleStore(settings.store_dir), None, "1h")
    limits = Limits()
    rows = []
    for until in pd.date_range("2024-09-01", "2025-06-01", freq="30D", tz="UTC"):
        window = matrix[(matrix["open_time"] > until) & (matrix["open_time"] <= until + WINDOW * HOUR)]
        short = matrix[(matrix["open_time"] <= until) & (matrix["open_time"] > until - 720 * HOUR)]
        long = matrix[
            (matrix["open_time"] <= until) & (matrix["open_time"] > until - limits.reference_bars * HOUR)
        ]
        plain_short, plain_long = drift(short, window), drift(long, window)
        bounds = usual_drift(long, WINDOW, limits)
        rows.append(
            {"until": until.date().isoformat(), "features": len(plain_long),
             "plain_720": float(np.mean([v > limits.psi_bound for v in plain_short.values()])),
             "plain_2160": float(np.mean([v > limits.psi_bound for v in plain_long.values()])),
             "relative": float(np.mean([v > bounds.get(c, limits.psi_bound) for c, v in plain_long.items()]))}
        )  # fmt: skip
    table = Table(title="Share of features drifted in the week after each date (PSI bound 0.25)")
    for column in ("week after", "features", "PSI > 0.25 (720 bars)", "PSI > 0.25 (2,160)", "relative rule"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["until"], str(r["features"]), f"{r['plain_720']:.0%}", f"{r['plain_2160']:.0%}",
                      f"{r['relative']:.0%}")  # fmt: skip
    Console().print(table)
    fired = sum(r["relative"] > limits.max_drifted_share for r in rows)
    print(
        f"the check (more than {limits.max_drifted_share:.0%} drifted) fires on {fired} of {len(rows)} weeks"
    )
    write_results("drift", {"benchmark": "drift", "window_bars": WINDOW, "rows": rows, "fired": fired})


if __name__ == "__main__":
    main()
