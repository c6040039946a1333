"""``qt ingest``, ``qt validate``, ``qt features``: candles into the store, checked, and features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.markup import escape

from cli.app import (
    EndOpt,
    HomeOpt,
    IntervalOpt,
    JsonOpt,
    MarketOpt,
    StartOpt,
    SymbolsOpt,
    app,
    parse_symbols,
    run,
    short_time,
)
from cli.output import progress_bars, stderr, table
from core.settings import Settings


def _ingest_table(report: dict[str, Any]) -> Any:
    rows = [
        [
            r["symbol"],
            r["interval"],
            r["rows_added"],
            r["rows_updated"],
            r["rows_total"],
            short_time(r["first_open_time"]),
            short_time(r["last_open_time"]),
            r["gaps"],
            r["missing_candles"],
        ]
        for r in report["symbols"].values()
    ]
    columns = ["symbol", "ival", "added", "upd", "total", "first", "last", "gaps"]
    columns.append("missing")
    return table("Ingested candles", columns, rows)


@app.command()
def ingest(
    source: Annotated[str, typer.Option("--source", help="sample (bundled), files, or binance.")] = "sample",
    symbols: SymbolsOpt = None,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    start: StartOpt = None,
    end: EndOpt = None,
    path: Annotated[
        list[str] | None,
        typer.Option("--path", help="File, folder or quoted glob; repeatable (files source)."),
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", help="Binance: the N symbols with most 24h quote volume.")
    ] = None,
    min_quote_volume: Annotated[
        float | None, typer.Option("--min-quote-volume", help="Binance universe: minimum 24h quote volume.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace stored candles whose values differ (default: refuse, exit 2)."
        ),
    ] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load candles into the store, validated (Great Expectations); idempotent.

    Failing batches are quarantined with a report and nothing of them is stored (exit 2).
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.candles import check_market, interval_ms
        from core.errors import BadConfigError
        from core.timeutil import parse_range
        from tasks.ingest.files import expand_paths

        if source not in ("sample", "files", "binance"):
            raise BadConfigError(f"--source {source!r}: choose sample, files or binance")
        if source == "files":
            if not path:
                raise BadConfigError("--source files needs at least one --path")
            expand_paths(path)  # a missing file fails here, before Prefect starts
        check_market(market)
        if interval:
            interval_ms(interval)
        parse_range(start, end)
        from flows.ingest import Source, ingest_flow
        from infra.prefect_api import note_ephemeral

        note_ephemeral(settings)

        with progress_bars(enabled=not as_json and stderr.is_terminal):
            report = ingest_flow(
                source=cast(Source, source),
                symbols=parse_symbols(symbols),
                interval=interval,
                market=market,
                start=start,
                end=end,
                paths=path,
                top=top,
                min_quote_volume=min_quote_volume,
                home=str(settings.home),
                overwrite=overwrite,
            )
        return report, _ingest_table(report)

    run(home, as_json, command)


@app.command()
def validate(
    symbols: SymbolsOpt = None,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Move damaged or failing dataset files to quarantine (with a report) to re-ingest them.",
        ),
    ] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the Great Expectations suite over stored candles; exit 2 if any check fails.

    A store file that another tool damaged (truncated, not Parquet, duplicate or unsorted
    rows) is named with its problem; --repair moves it aside so ingest can rebuild it.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from tasks.quarantine import validate_store
        from tasks.store import CandleStore

        ival = interval or settings.default_interval
        store = CandleStore(settings.store_dir)
        document = validate_store(
            store, parse_symbols(symbols), ival, market, settings.quarantine_dir if repair else None
        )
        rows = [
            [s, d["rows"], "ok", d["gaps"], d["missing_candles"]] for s, d in document["datasets"].items()
        ]
        rows += [[s, 0, "moved to quarantine", 0, 0] for s in document["repaired"]]
        for s, r in document["repaired"].items():
            stderr.print(f"{s}: {escape(r['problem'])}\n  moved to {r['moved_to']}", highlight=False)
        if document["repaired"]:
            stderr.print(f"ingest {', '.join(document['repaired'])} again to rebuild them", highlight=False)
        return document, table(
            f"Validation of stored {ival} {market} candles",
            ["symbol", "rows", "checks", "gaps", "missing"],
            rows,
        )

    run(home, as_json, command, writes=repair)


@app.command()
def features(
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write the matrix to.")],
    symbols: SymbolsOpt = None,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    start: StartOpt = None,
    end: EndOpt = None,
    include_unlabeled: Annotated[
        bool, typer.Option("--include-unlabeled", help="Keep the newest rows whose target is not known yet.")
    ] = False,
    horizon: Annotated[int, typer.Option("--horizon", min=1, help="Target horizon in bars.")] = 1,
    sentiment: Annotated[
        Path | None, typer.Option("--sentiment", help="CSV of timestamp,score[,symbol] (optional source).")
    ] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the feature matrix used for training: symbol, open_time, features, target_*."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.candles import check_market, interval_ms
        from core.timeutil import parse_range, to_iso
        from tasks.features import FeatureSpec, feature_columns
        from tasks.features.dataset import features_from_store
        from tasks.store import CandleStore, check_writable, write_parquet_atomic

        ival = interval or settings.default_interval
        interval_ms(ival)
        check_market(market)
        first, last = parse_range(start, end)
        check_writable(out, "--out")
        spec = FeatureSpec()
        matrix = features_from_store(
            CandleStore(settings.store_dir),
            parse_symbols(symbols),
            ival,
            market,
            spec,
            horizon=horizon,
            include_unlabeled=include_unlabeled,
            start=first,
            end=last,
            sentiment_csv=sentiment or settings.sentiment_csv,
        )
        write_parquet_atomic(matrix, out)
        per_symbol = matrix.groupby("symbol")["open_time"].agg(["size", "min", "max"])
        by_symbol = {
            str(s): {
                "rows": int(r["size"]),
                "first_open_time": to_iso(r["min"]),
                "last_open_time": to_iso(r["max"]),
            }
            for s, r in per_symbol.iterrows()
        }
        columns = feature_columns(matrix)
        document = {
            "out": str(out),
            "rows": len(matrix),
            "symbols": by_symbol,
            "feature_columns": columns,
            "target_columns": [c for c in matrix.columns if c.startswith("target_")],
            "min_history": spec.min_history,
            "unlabeled_rows": int(matrix["target_log_return"].isna().sum()),
        }
        rows = [[s, d["rows"], d["first_open_time"], d["last_open_time"]] for s, d in by_symbol.items()]
        stderr.print(f"{len(columns)} features, wrote {out}", highlight=False)
        return document, table(
            "Feature matrix", ["symbol", "rows", "first open_time", "last open_time"], rows
        )

    run(home, as_json, command, writes=False)
