"""``qt``: the front door. Every command has ``--help``, ``--json`` and ``--home``.

Exit codes: 0 success, 1 runtime error, 2 bad input or failed validation.
Heavy libraries (Prefect, Great Expectations, pandas) are imported inside the commands so
``qt --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from rich.markup import escape

from cli.output import emit_json, progress_bars, setup_console_logging, stderr, stdout, table
from core.errors import IngestError, QTError
from core.settings import Settings, configure_environment, load_settings

app = typer.Typer(
    name="qt",
    help="Quantum Trader: calibrated crypto trading signals from one reproducible DAG.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="QT_HOME",
        help="State folder (store, MLflow, Prefect, journal).",
        show_default="./.qt",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout; logs go to stderr.")
]
SymbolsOpt = Annotated[
    str | None, typer.Option("--symbols", help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT.")
]
IntervalOpt = Annotated[str | None, typer.Option("--interval", help="Candle interval, e.g. 1h or 5m.")]
MarketOpt = Annotated[str, typer.Option("--market", help="spot or futures (USD-M).")]
StartOpt = Annotated[str | None, typer.Option("--start", help="First open time (UTC), e.g. 2024-01-01.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="Last open time (UTC), inclusive.")]


def _symbols(value: str | None) -> list[str] | None:
    if not value:
        return None
    from core.candles import check_symbol

    return [check_symbol(s) for s in value.split(",") if s.strip()]


def _run(home: Path | None, as_json: bool, command: Callable[[Settings], tuple[dict[str, Any], Any]]) -> None:
    """Load settings, run a command, render its result, map errors to exit codes."""
    setup_console_logging()
    try:
        settings = _settings(home)
        configure_environment(settings)
        document, renderable = command(settings)
    except QTError as err:
        partial = err.report if isinstance(err, IngestError) else {}
        _fail(as_json, str(err), err.exit_code, partial)
    except Exception as err:  # a bug: still one JSON document, and the traceback on stderr
        stderr.print_exception()
        _fail(as_json, f"unexpected {type(err).__name__}: {err}", 1, {})
    if as_json:
        emit_json(document)
    elif renderable is not None:
        stdout.print(renderable)


def _settings(home: Path | None) -> Settings:
    from pydantic import ValidationError

    from core.errors import BadConfigError

    try:
        return load_settings(home)
    except ValidationError as err:
        raise BadConfigError(f"invalid settings (QT_* environment or .env): {err}") from err


def _costs(settings: Settings, market: str) -> Any:
    """Backtest costs from the settings: taker fee, slippage, funding on futures only."""
    from tasks.backtest import Costs

    return Costs(
        fee_bps=settings.taker_fee_bps,
        slippage_bps=settings.slippage_bps,
        funding_rate=settings.funding_rate_8h if market == "futures" else 0.0,
    )


def _fail(as_json: bool, message: str, exit_code: int, partial: dict[str, Any]) -> NoReturn:
    if as_json:
        emit_json({**partial, "error": message, "exit_code": exit_code})
    stderr.print(f"[bold red]error[/]: {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


def _short_time(iso: str | None) -> str:
    """``2024-03-15T00:00:00Z`` → ``2024-03-15 00:00`` (fits an 80-column table)."""
    return iso[:16].replace("T", " ") if iso else "-"


def _ingest_table(report: dict[str, Any]) -> Any:
    rows = [
        [
            sym,
            r["rows_added"],
            r["rows_total"],
            _short_time(r["first_open_time"]),
            _short_time(r["last_open_time"]),
            r["gaps"],
            r["missing_candles"],
        ]
        for sym, r in report["symbols"].items()
    ]
    columns = ["symbol", "added", "total", "first open", "last open", "gaps", "missing"]
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
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load candles into the store, validated (Great Expectations); idempotent.

    Failing batches are quarantined with a report and nothing of them is stored (exit 2).
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.candles import check_market, interval_ms
        from core.errors import BadConfigError
        from core.timeutil import parse_utc
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
        parse_utc(start, "--start")
        parse_utc(end, "--end")
        from flows.ingest import Source, ingest_flow

        with progress_bars(enabled=not as_json and stderr.is_terminal):
            report = ingest_flow(
                source=cast(Source, source),
                symbols=_symbols(symbols),
                interval=interval,
                market=market,
                start=start,
                end=end,
                paths=path,
                top=top,
                min_quote_volume=min_quote_volume,
                home=str(settings.home),
            )
        return report, _ingest_table(report)

    _run(home, as_json, command)


@app.command()
def validate(
    symbols: SymbolsOpt = None,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the Great Expectations suite over stored candles; exit 2 if any check fails."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.candles import count_gaps, interval_ms
        from core.errors import BadConfigError, BadDataError
        from tasks.store import CandleStore
        from tasks.validate import validate_stored

        store = CandleStore(settings.store_dir)
        ival = interval or settings.default_interval
        chosen = _symbols(symbols) or store.symbols(ival, market)
        if not chosen:
            raise BadConfigError(
                f"no stored {ival} {market} candles under {settings.store_dir}; run qt ingest first"
            )
        datasets: dict[str, Any] = {}
        for symbol in chosen:
            frame = store.read(symbol, ival, market)
            if frame.empty:
                raise BadConfigError(f"{symbol} {ival} {market}: nothing stored")
            gaps, missing = count_gaps(frame.index, interval_ms(ival))
            report = validate_stored(frame, symbol, ival, market, str(store.path(symbol, ival, market)))
            datasets[symbol] = {
                "rows": report.rows,
                "success": report.success,
                "gaps": gaps,
                "missing_candles": missing,
                "failures": [f.describe() for f in report.failures],
            }
        document = {"interval": ival, "market": market, "datasets": datasets}
        failed = {s: d for s, d in datasets.items() if not d["success"]}
        if failed:
            detail = "\n".join(f"{s}: " + "; ".join(d["failures"]) for s, d in failed.items())
            raise BadDataError(f"stored data failed validation:\n{detail}")
        rows = [[s, d["rows"], "ok", d["gaps"], d["missing_candles"]] for s, d in datasets.items()]
        return document, table(
            f"Validation of stored {ival} {market} candles",
            ["symbol", "rows", "checks", "gaps", "missing"],
            rows,
        )

    _run(home, as_json, command)


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
        from core.errors import BadConfigError
        from core.timeutil import parse_utc, to_iso
        from tasks.features import FeatureSpec, feature_columns
        from tasks.features.dataset import features_from_store
        from tasks.store import CandleStore, write_parquet_atomic

        ival = interval or settings.default_interval
        interval_ms(ival)
        check_market(market)
        if out.is_dir():
            raise BadConfigError(f"--out {out}: is a folder; give a file name like features.parquet")
        spec = FeatureSpec()
        matrix = features_from_store(
            CandleStore(settings.store_dir),
            _symbols(symbols),
            ival,
            market,
            spec,
            horizon=horizon,
            include_unlabeled=include_unlabeled,
            start=parse_utc(start, "--start"),
            end=parse_utc(end, "--end"),
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

    _run(home, as_json, command)


ModelsOpt = Annotated[
    str | None,
    typer.Option("--models", help="Comma-separated base models: xgb,lgbm,tft,nhits,patchtst (default: all)."),
]
ProfileOpt = Annotated[str, typer.Option("--profile", help="fast (small nets, minutes on 2 cores) or full.")]
TrialsOpt = Annotated[
    int, typer.Option("--trials", min=0, help="Optuna trials per XGBoost/LightGBM fit (0: profile defaults).")
]


@app.command()
def walkforward(
    symbols: SymbolsOpt = None,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    models: ModelsOpt = None,
    profile: ProfileOpt = "fast",
    trials: TrialsOpt = 0,
    folds: Annotated[int, typer.Option("--folds", min=1, help="Number of equal test windows.")] = 4,
    test_days: Annotated[
        int, typer.Option("--test-days", min=1, help="Days covered by the test windows, ending at --until.")
    ] = 365,
    until: Annotated[
        str | None, typer.Option("--until", help="End (exclusive) of the last test window; default: newest.")
    ] = None,
    valid_days: Annotated[int, typer.Option("--valid-days", min=1, help="Validation window per fold.")] = 30,
    embargo: Annotated[int, typer.Option("--embargo", min=0, help="Bars left out before each test.")] = 24,
    window: Annotated[str, typer.Option("--window", help="expanding or rolling.")] = "expanding",
    train_days: Annotated[
        int | None, typer.Option("--train-days", min=1, help="Training window length for --window rolling.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random choice.")] = 42,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or gpu (neural models).")] = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", help="Parquet file for the OOF predictions table.")
    ] = None,
    track: Annotated[
        bool, typer.Option("--track/--no-track", help="Log runs, metrics and plots to MLflow.")
    ] = True,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Purged, embargoed walk-forward: OOF AUC and log loss per model and for the stacker.

    Every base model is fitted (and tuned, with --trials) on each fold's training window
    only and predicts the same test rows; the stacker learns from earlier folds' OOF
    predictions. Figures are beside climatology (the training window's base rate).
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        import pandas as pd

        from core.candles import check_market, interval_ms
        from core.errors import BadConfigError
        from core.timeutil import parse_utc
        from tasks.features.dataset import features_from_store
        from tasks.models import ModelConfig, parse_models
        from tasks.store import CandleStore, write_parquet_atomic
        from tasks.walkforward import WalkForward, walk_forward

        ival = interval or settings.default_interval
        step = pd.Timedelta(milliseconds=interval_ms(ival))
        check_market(market)
        names = parse_models(models)
        if profile not in ("fast", "full"):
            raise BadConfigError(f"--profile {profile!r}: use fast or full")
        if window not in ("expanding", "rolling") or device not in ("auto", "cpu", "gpu"):
            raise BadConfigError("--window takes expanding|rolling and --device auto|cpu|gpu")
        matrix = features_from_store(CandleStore(settings.store_dir), _symbols(symbols), ival, market)
        end = parse_utc(until, "--until") or (matrix["open_time"].max() + step)
        plan = WalkForward(
            test_start=(end - pd.Timedelta(days=test_days)).ceil(step),
            test_end=end,
            folds=folds,
            step=step,
            valid_bars=int(pd.Timedelta(days=valid_days) / step),
            embargo=embargo,
            window=cast(Any, window),
            train_bars=int(pd.Timedelta(days=train_days) / step) if train_days else None,
        )
        config = ModelConfig(
            profile=cast(Any, profile),
            seed=seed,
            device=cast(Any, device),
            trials=trials,
            study_dir=settings.home / "optuna",
        )
        with progress_bars(enabled=not as_json and stderr.is_terminal):
            result = walk_forward(matrix, names, config, plan)
        target = out or settings.home / "walkforward" / f"oof-{ival}-{end:%Y%m%dT%H%M}.parquet"
        write_parquet_atomic(result.oof, target)
        summary = result.summary()
        document = {**summary, "oof": str(target), "reports": result.reports, "models_run": names}
        if result.stacker is not None:
            from tasks.evaluation import evaluate

            evaluation = evaluate(result.oof, matrix, step, _costs(settings, market))
            document["evaluation"] = evaluation.report
            bt, base = evaluation.report["backtest"], evaluation.report["baselines"]
            stderr.print(
                f"backtest net of costs (stacker, cost-aware policy): Sharpe {bt['sharpe']:.2f}, "
                f"return {bt['total_return']:+.1%}, turnover {bt['turnover']:.0f}; buy-and-hold Sharpe "
                f"{base['buy_and_hold']['sharpe']:.2f}, "
                f"momentum fallback {base['momentum_fallback']['sharpe']:.2f}",
                highlight=False,
            )
            if track:
                from tasks.tracking import track_walk_forward

                params = {
                    "models": names, "profile": profile, "trials": trials, "seed": seed, "folds": folds,
                    "test_days": test_days, "valid_days": valid_days, "embargo": embargo, "window": window,
                    "train_days": train_days, "interval": ival, "market": market,
                    "costs": evaluation.report["costs"], "policy": evaluation.report["policy"],
                }  # fmt: skip
                run_id = track_walk_forward(settings, result, evaluation, matrix, params, ival, market)
                document["mlflow_run_id"] = run_id
                stderr.print(f"MLflow run {run_id} ({settings.tracking_uri})", highlight=False)
        rows = []
        for name, m in summary["models"].items():
            beats = sum(f["log_loss"] < f["log_loss_climatology"] for f in m["per_fold"])
            rows.append(
                [
                    name,
                    f"{m['auc']:.4f}",
                    f"{min(f['auc'] for f in m['per_fold']):.4f}",
                    f"{m['log_loss']:.5f}",
                    f"{m['log_loss_climatology']:.5f}",
                    f"{m['ece']:.4f}",
                    f"{beats}/{len(m['per_fold'])}",
                ]
            )
        weights = ", ".join(f"{k} {v:+.3f}" for k, v in summary.get("stacker_weights", {}).items())
        stderr.print(f"{summary['rows']:,} OOF rows compared; stacker weights: {weights}", highlight=False)
        stderr.print(f"OOF table → {target}", highlight=False)
        return document, table(
            "Walk-forward (out of fold, same rows)",
            ["model", "AUC", "min fold AUC", "log loss", "climatology", "ECE", "folds < clim"],
            rows,
        )

    _run(home, as_json, command)


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Option("--model", help="champion, challenger or a registered version number.")
    ] = "champion",
    symbols: SymbolsOpt = None,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    start: StartOpt = None,
    end: EndOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Out-of-sample metrics and backtest of a registered model on stored data, with baselines.

    Default range: from the first bar after the model's training data to the newest
    labelled bar, so the figures are out of sample (an earlier --start is flagged).
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        import pandas as pd

        from core.candles import check_market, interval_ms
        from core.timeutil import parse_utc
        from model_registry.evaluate import evaluate_ensemble
        from model_registry.registry import load_ensemble
        from tasks.features.dataset import features_from_store
        from tasks.store import CandleStore

        ival = interval or settings.default_interval
        step = pd.Timedelta(milliseconds=interval_ms(ival))
        check_market(market)
        ensemble, version = load_ensemble(settings, ival, model)
        matrix = features_from_store(CandleStore(settings.store_dir), _symbols(symbols), ival, market)
        report = evaluate_ensemble(
            ensemble,
            matrix,
            step,
            _costs(settings, market),
            parse_utc(start, "--start"),
            parse_utc(end, "--end"),
        )
        document = {"model_version": version, **report}
        rows = [["model (stacker)", report["classification"], report["backtest"]]]
        rows += [[n, v, None] for n, v in report["per_model"].items()]
        table_rows = [
            [
                name,
                f"{c['auc']:.4f}",
                f"{c['log_loss']:.5f}",
                f"{b['sharpe']:.2f}" if b else "",
            ]
            for name, c, b in rows
        ]
        for name in ("buy_and_hold", "momentum_fallback", "always_flat"):
            table_rows.append([name, "", "", f"{report['baselines'][name]['sharpe']:.2f}"])
        clim = report["classification"]["log_loss_climatology"]
        stderr.print(
            f"version {version}, {report['rows']:,} rows {report['start'][:16]} → {report['end'][:16]}; "
            f"climatology log loss {clim:.5f}"
            + (" (IN SAMPLE: overlaps training data)" if report["in_sample"] else ""),
            highlight=False,
        )
        return document, table(
            "Evaluation (same rows, net of costs)", ["model", "AUC", "log loss", "Sharpe"], table_rows
        )

    _run(home, as_json, command)


@app.command()
def demo(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """The main job on the bundled sample: ingest (validated) → feature matrix.

    Training, promotion and the replayed live session join this command as they land.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from flows.ingest import ingest_flow
        from tasks.features import FeatureSpec, feature_columns
        from tasks.features.dataset import features_from_store
        from tasks.store import CandleStore, write_parquet_atomic

        with progress_bars(enabled=not as_json and stderr.is_terminal):
            report = ingest_flow(source="sample", home=str(settings.home))
        matrix = features_from_store(CandleStore(settings.store_dir), None, "1h", spec=FeatureSpec())
        out = settings.home / "features" / "sample-1h.parquet"
        write_parquet_atomic(matrix, out)
        up_rate = float(matrix["target_up"].mean())
        summary = {
            "out": str(out),
            "rows": len(matrix),
            "features": len(feature_columns(matrix)),
            "target_up_rate": round(up_rate, 4),
        }
        stderr.print(
            f"feature matrix: {len(matrix):,} rows × {summary['features']} features "
            f"(share of up bars {up_rate:.1%}) → {out}",
            highlight=False,
        )
        return {"ingest": report, "features": summary, "home": str(settings.home)}, _ingest_table(report)

    _run(home, as_json, command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
