"""Ingest benchmark: import the 10 shared 1h files, no-op re-ingest, read all back.

Measures the task layer (parse → Great Expectations → atomic upsert) without Prefect's
per-run overhead, which is reported separately (one `qt ingest` of all 10 files).
Prints a table and writes bench/results/ingest.json. Needs ../shared/data/binance.

    .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import write_results  # noqa: E402
from core.settings import configure_environment, load_settings  # noqa: E402
from tasks.ingest import ingest_files  # noqa: E402
from tasks.ingest.files import expand_paths, group_files  # noqa: E402
from tasks.store import CandleStore  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "binance"


def _timed(fn):  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def main() -> int:
    files = sorted(SHARED.glob("*-1h.csv"))
    if len(files) != 10:
        print(f"skipped: needs the 10 1h files of {SHARED} (found {len(files)})", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(Path(tmp) / "home")
        configure_environment(settings)
        groups = group_files(expand_paths([str(SHARED)]), None, "1h")

        def ingest_all() -> int:
            return sum(
                ingest_files(s, i, "spot", p, "files", settings).rows_added for (s, i), p in groups.items()
            )

        ingest_all_warm = ingest_files  # GX import + suite build happen on first use: warm them up
        _, warmup = _timed(
            lambda: ingest_all_warm(
                "BTCUSDT", "1h", "spot", groups[("BTCUSDT", "1h")], "files", load_settings(Path(tmp) / "warm")
            )
        )
        rows, cold_s = _timed(ingest_all)
        noop_rows, noop_s = _timed(ingest_all)
        store = CandleStore(settings.store_dir)
        symbols = store.symbols("1h")
        frame, read_s = _timed(lambda: store.read_many(symbols, "1h"))

        home = Path(tmp) / "cli-home"
        env = {**os.environ, "QT_HOME": str(home)}
        cmd = [
            sys.executable,
            "-m",
            "cli.main",
            "ingest",
            "--source",
            "files",
            "--path",
            str(SHARED),
            "--interval",
            "1h",
            "--json",
        ]
        cli, cli_s = _timed(
            lambda: subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        )

    results = {
        "files": len(files),
        "rows": rows,
        "first_use_warmup_s": round(warmup, 3),
        "import_s": round(cold_s, 3),
        "import_rows_per_s": round(rows / cold_s),
        "noop_reingest_s": round(noop_s, 3),
        "noop_rows_added": noop_rows,
        "read_all_10_s": round(read_s, 4),
        "read_rows": len(frame),
        "cli_end_to_end_s": round(cli_s, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    table = Table(title="Ingest benchmark (10 shared 1h files)", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("rows imported", f"{rows:,}")
    table.add_row("import (parse + GX + atomic write)", f"{cold_s:.2f} s  ({rows / cold_s:,.0f} rows/s)")
    table.add_row("no-op re-ingest (0 rows added)", f"{noop_s:.2f} s")
    table.add_row("read all 10 symbols back (read_many)", f"{read_s * 1000:.1f} ms  ({len(frame):,} rows)")
    table.add_row("`qt ingest` of the folder, end to end (Prefect ephemeral)", f"{cli_s:.1f} s")
    Console().print(table)
    write_results("ingest", results)
    return 0 if cli.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
