"""``qt``: the front door. Every command has ``--help``, ``--json`` and ``--home``.

Exit codes: 0 success, 1 runtime error, 2 bad input or failed validation.
Heavy libraries (Prefect, Great Expectations, pandas) are imported inside the commands so
``qt --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from rich.markup import escape

from cli.output import emit_json, progress_bars, setup_console_logging, stderr, stdout, table
from core.errors import IngestError, QTError
from core.settings import Settings, check_home, configure_environment, load_settings

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


def _run(
    home: Path | None,
    as_json: bool,
    command: Callable[[Settings], tuple[dict[str, Any], Any]],
    *,
    writes: bool = True,
) -> None:
    """Load settings, run a command, render its result, map errors to exit codes.

    ``writes=False`` marks a command that only reads the home: it then works on a
    read-only home. A command that writes checks the home is writable before any work.
    Ctrl-C (or SIGTERM) ends it within a second: exit 130 (143), with a JSON document of
    what was stored and what was not (see :mod:`cli.interrupt`).
    """
    from cli.interrupt import handle_interrupts

    setup_console_logging()
    try:
        settings = _settings(home)
        check_home(settings, write=writes)
        configure_environment(settings)
        with handle_interrupts(as_json):
            document, renderable = command(settings)
    except QTError as err:
        partial = err.report if isinstance(err, IngestError) else {}
        _fail(as_json, str(err), err.exit_code, partial)
    except OSError as err:  # a path the environment does not allow: the person must act
        where = f"{err.filename}: " if err.filename else ""
        _fail(as_json, f"{where}{err.strerror or err}", 2, {})
    except Exception as err:  # a bug: still one JSON document, and the traceback on stderr
        damage = _database_damage(err)
        if damage:
            _fail(as_json, damage, 2, {})
        stderr.print_exception()
        _fail(as_json, f"unexpected {type(err).__name__}: {err}", 1, {})
    if as_json:
        emit_json(document)
    elif renderable is not None:
        stdout.print(renderable)


def _database_damage(err: BaseException) -> str | None:
    """A damaged SQLite database (MLflow's, Prefect's) anywhere in the chain: a person must act."""
    import sqlite3

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, sqlite3.DatabaseError) and not isinstance(seen, sqlite3.OperationalError):
            return f"a database under the home is damaged ({seen}); restore it or move it aside"
        seen = seen.__cause__ or seen.__context__
    return None


def _settings(home: Path | None) -> Settings:
    from pydantic import ValidationError

    from core.errors import BadConfigError

    try:
        return load_settings(home)
    except ValidationError as err:
        raise BadConfigError(f"invalid settings (QT_* environment or .env): {err}") from err


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
            r["symbol"],
            r["interval"],
            r["rows_added"],
            r["rows_updated"],
            r["rows_total"],
            _short_time(r["first_open_time"]),
            _short_time(r["last_open_time"]),
            r["gaps"],
            r["missing_candles"],
        ]
        for r in report["symbols"].values()
    ]
    columns = ["symbol", "interval", "added", "updated", "total", "first open", "last open", "gaps"]
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
                symbols=_symbols(symbols),
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

    _run(home, as_json, command)


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
        from tasks.store import CandleStore
        from tasks.validate import validate_store

        ival = interval or settings.default_interval
        store = CandleStore(settings.store_dir)
        document = validate_store(
            store, _symbols(symbols), ival, market, settings.quarantine_dir if repair else None
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

    _run(home, as_json, command, writes=repair)


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
            _symbols(symbols),
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

    _run(home, as_json, command, writes=False)


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
        from tasks.store import CandleStore, check_writable, write_parquet_atomic
        from tasks.walkforward import WalkForward, walk_forward

        ival = interval or settings.default_interval
        step = pd.Timedelta(milliseconds=interval_ms(ival))
        check_market(market)
        names = parse_models(models)
        if profile not in ("fast", "full"):
            raise BadConfigError(f"--profile {profile!r}: use fast or full")
        if window not in ("expanding", "rolling") or device not in ("auto", "cpu", "gpu"):
            raise BadConfigError("--window takes expanding|rolling and --device auto|cpu|gpu")
        if out is not None:
            check_writable(out, "--out")
        matrix = features_from_store(CandleStore(settings.store_dir), _symbols(symbols), ival, market)
        end = parse_utc(until, "--until") or (matrix["open_time"].max() + step)
        plan = WalkForward.before(
            end, test_days, folds, step, valid_days, embargo, cast(Any, window), train_days
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
            from tasks.backtest import Costs
            from tasks.evaluation import evaluate

            evaluation = evaluate(result.oof, matrix, step, Costs.from_settings(settings, market))
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
def retrain(
    symbols: SymbolsOpt = None,
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    models: ModelsOpt = None,
    profile: ProfileOpt = "fast",
    trials: TrialsOpt = 0,
    until: Annotated[
        str | None, typer.Option("--until", help="Ignore candles from this time on (a past retrain).")
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="New candles first: auto (bundled sample if the store is empty), store, sample, binance.",
        ),
    ] = "auto",
    folds: Annotated[int, typer.Option("--folds", min=2, help="Walk-forward test windows.")] = 3,
    test_days: Annotated[
        int, typer.Option("--test-days", min=1, help="Days of walk-forward test windows before shadow.")
    ] = 90,
    shadow_hours: Annotated[
        int, typer.Option("--shadow-hours", min=1, help="Newest closed candles held out for shadow.")
    ] = 168,
    margin: Annotated[
        float, typer.Option("--margin", min=0, help="Log-loss gain over the champion the gate requires.")
    ] = 0.0002,
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random choice.")] = 42,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or gpu (neural models).")] = "auto",
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes fitting models (default: cores).")
    ] = None,
    label_noise: Annotated[
        float,
        typer.Option(
            "--label-noise",
            min=0,
            max=1,
            help="Drill: shuffle this share of training labels (the gate must refuse the model).",
        ),
    ] = 0.0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The training flow, ending in a recorded promotion decision.

    ingest → validate → features → train → stack → evaluate → register challenger →
    shadow → promote (through the gate). Runs on Prefect (ephemeral unless
    PREFECT_API_URL names a server); logs one MLflow parent run with a child run per
    model family and for the stacker.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.candles import check_market
        from core.errors import BadConfigError
        from core.timeutil import parse_utc
        from flows.training import training_flow
        from tasks.models import parse_models

        names = parse_models(models)
        check_market(market)
        parse_utc(until, "--until")
        if profile not in ("fast", "full") or device not in ("auto", "cpu", "gpu"):
            raise BadConfigError("--profile takes fast|full and --device auto|cpu|gpu")
        if source not in ("auto", "store", "sample", "binance"):
            raise BadConfigError(f"--source {source!r}: use auto, store, sample or binance")
        from infra.prefect_api import note_ephemeral

        note_ephemeral(settings)
        flow: Any = training_flow
        if workers:
            from prefect.task_runners import ProcessPoolTaskRunner

            runner: Any = ProcessPoolTaskRunner(max_workers=workers)
            flow = training_flow.with_options(task_runner=runner)
        with progress_bars(enabled=not as_json and stderr.is_terminal):
            doc = flow(
                symbols=_symbols(symbols), interval=interval or settings.default_interval, market=market,
                models=names, profile=profile, trials=trials, until=until, source=source, folds=folds,
                test_days=test_days, shadow_hours=shadow_hours, seed=seed, device=device, margin=margin,
                label_noise=label_noise, home=str(settings.home),
            )  # fmt: skip
        verdict = "[bold green]PROMOTED[/]" if doc["promoted"] else "[bold yellow]NOT PROMOTED[/]"
        stderr.print(f"challenger v{doc['challenger_version']}: {verdict}", highlight=False)
        stderr.print(escape(doc["reason"]), highlight=False, soft_wrap=True)
        stderr.print(f"MLflow run {doc['run_id']} ({settings.tracking_uri})", highlight=False)
        rows = [
            [c["name"], "pass" if c["passed"] else "FAIL", escape(c["detail"])] for c in doc["gate"]["checks"]
        ]
        title = f"Promotion gate (champion: {_v(doc['champion'])})"
        return doc, table(title, ["check", "result", "detail"], rows)

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
        from tasks.backtest import Costs
        from tasks.features.dataset import features_from_store
        from tasks.store import CandleStore

        ival = interval or settings.default_interval
        step = pd.Timedelta(milliseconds=interval_ms(ival))
        check_market(market)
        ensemble, version = load_ensemble(settings, ival, model, market=market)
        matrix = features_from_store(CandleStore(settings.store_dir), _symbols(symbols), ival, market)
        report = evaluate_ensemble(
            ensemble,
            matrix,
            step,
            Costs.from_settings(settings, market),
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

    _run(home, as_json, command, writes=False)


registry_app = typer.Typer(
    help="Inspect and move the champion / challenger aliases of the registered model.",
    no_args_is_help=True,
)
app.add_typer(registry_app, name="registry")


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _history_table(events: list[dict[str, Any]]) -> Any:
    rows = [
        [e["seq"], e["time"][:16].replace("T", " "), e["action"], e["version"], e.get("previous") or "-",
         e["actor"], escape(str(e.get("reason", ""))[:90])]
        for e in events
    ]  # fmt: skip
    return table("History", ["#", "time (UTC)", "action", "version", "previous", "by", "reason"], rows)


@registry_app.command("list")
def registry_list(
    interval: IntervalOpt = None, market: MarketOpt = "spot", home: HomeOpt = None, as_json: JsonOpt = False
) -> None:
    """Every version (newest first) with its aliases and figures, and the promotion history."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from rich.console import Group

        from model_registry.registry import describe

        doc = describe(settings, interval or settings.default_interval, market=market)
        rows = [
            [v["version"], ",".join(v["aliases"]) or "-", v["created"][:16].replace("T", " "),
             _fmt(v["metrics"].get("oof_auc")), _fmt(v["metrics"].get("oof_log_loss"), 5),
             _fmt(v["metrics"].get("oof_ece")), _fmt(v["metrics"].get("backtest_sharpe"), 2)]
            for v in doc["versions"]
        ]  # fmt: skip
        versions = table(
            f"{doc['name']}: champion {_v(doc['champion'])}, challenger {_v(doc['challenger'])}",
            ["version", "aliases", "created (UTC)", "OOF AUC", "OOF log loss", "ECE", "Sharpe"],
            rows,
        )
        return doc, Group(versions, _history_table(doc["history"]))

    _run(home, as_json, command, writes=False)


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version number, champion or challenger.")] = "champion",
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One version: aliases, run, metrics, data range and hash, the gate's decision."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from core.errors import BadConfigError
        from model_registry.registry import ALIASES, alias_version, describe_version

        ival = interval or settings.default_interval
        number = alias_version(settings, ival, version, market=market) if version in ALIASES else version
        if number is None:
            raise BadConfigError(f"no {version} yet; run qt retrain")
        doc = describe_version(settings, ival, number, market=market)
        rows = [[k, _fmt(v, 5)] for k, v in sorted(doc["metrics"].items())]
        rows += [[k, escape(str(v))] for k, v in sorted(doc["tags"].items())]
        title = f"version {doc['version']} ({', '.join(doc['aliases']) or 'no alias'}), run {doc['run_id']}"
        return doc, table(title, ["field", "value"], rows)

    _run(home, as_json, command, writes=False)


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")] = "manual promotion",
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make VERSION the champion (a person's decision; the gate is for machines)."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from model_registry.registry import promote

        ival = interval or settings.default_interval
        event = promote(settings, ival, version, "person", reason, market=market)
        stderr.print(f"champion: {_v(event['previous'])} → v{event['version']}", highlight=False)
        return event, None

    _run(home, as_json, command)


@registry_app.command("rollback")
def registry_rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")] = "",
    interval: IntervalOpt = None,
    market: MarketOpt = "spot",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point champion back at the previous champion (repeat to walk further back)."""

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from model_registry.registry import rollback

        event = rollback(settings, interval or settings.default_interval, "person", reason, market=market)
        stderr.print(f"champion: v{event['previous']} → v{event['version']} (rolled back)", highlight=False)
        return event, None

    _run(home, as_json, command)


@app.command()
def ui(
    prefect_port: Annotated[int, typer.Option("--prefect-port", help="Prefect server and UI port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="Port of the MLflow UI.")] = 5000,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the Prefect UI and the MLflow UI on localhost, print their URLs; Ctrl-C stops both.

    Both read the home's state: Prefect's database (flow runs, deployments) and MLflow's
    store (runs, plots, the registry). While it runs, every qt command for this home
    runs its flows on this server (no ephemeral one to start; the runs show in the UI):
    the server is recorded in <home>/prefect/server.json. Other shells or homes can
    export the printed PREFECT_API_URL.
    """
    started: list[Any] = []

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from infra.ui import start

        servers = start(settings, prefect_port, mlflow_port)
        started.append(servers)
        doc = {
            "prefect_ui": servers.prefect_url,
            "prefect_api": servers.prefect_api,
            "mlflow_ui": servers.mlflow_url,
        }
        stderr.print(
            f"Prefect UI  {servers.prefect_url}\nMLflow UI   {servers.mlflow_url}\n"
            f"qt commands for {settings.home} now run their flows on this server by themselves;\n"
            f"elsewhere: export PREFECT_API_URL={servers.prefect_api}\n"
            "Ctrl-C stops both.",
            highlight=False,
        )
        return doc, None

    _run(home, as_json, command)
    sys.stdout.flush()  # the URLs must reach a pipe before we block
    _block_until_interrupted(started[0])


def _block_until_interrupted(servers: Any) -> None:
    """Keep the servers up until Ctrl-C or SIGTERM (then stop them), or until one exits."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        code = servers.wait()
        stderr.print(f"[bold red]error[/]: a server exited with code {code}", highlight=False)
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()
    if code:
        raise typer.Exit(1)


@app.command()
def deploy(
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep running and execute runs as they come due.")
    ] = True,
    source: Annotated[
        str, typer.Option("--source", help="Where the scheduled retrains take new candles: store or binance.")
    ] = "store",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register (and serve) the deployments: daily retrain at 00:00 UTC, triggered retrain.

    Needs a Prefect server: the one qt ui keeps up for this home (found by itself), or
    PREFECT_API_URL. The
    triggered retrain has no schedule; the live side or a supervisor starts it
    (flows.deploy.request_retrain). The live flow's deployment joins when it lands.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        import os

        from core.errors import BadConfigError
        from flows.deploy import apply_deployments, check_api

        if source not in ("store", "binance"):
            raise BadConfigError(f"--source {source!r}: use store or binance")
        if not os.environ.get("PREFECT_API_URL"):
            raise BadConfigError(
                "qt deploy needs a Prefect server (ephemeral mode forgets deployments): "
                f"run qt ui --home {settings.home} in another terminal, or export PREFECT_API_URL"
            )
        check_api(os.environ["PREFECT_API_URL"])
        found = apply_deployments(settings, source)
        rows = [
            [d["name"], ", ".join(f"{s['cron']} {s['timezone']}" for s in d["schedules"]) or "on demand"]
            for d in found
        ]
        doc = {"deployments": found, "serving": serve}
        return doc, table("Deployments", ["deployment", "schedule"], rows)

    _run(home, as_json, command)
    if serve:
        from flows.deploy import serve as serve_deployments

        stderr.print("serving the deployments (Ctrl-C stops)", highlight=False)
        serve_deployments(_settings(home), source)


@app.command()
def demo(models: ModelsOpt = None, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """The main job on the bundled sample: ingest (validated) → retrain (fast) → gate.

    The whole training flow of qt retrain on the five bundled pairs, ending in a recorded
    promotion decision; then how to look at it (qt ui). The replayed live session joins
    this command when the live flow lands.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        from flows.training import training_flow
        from infra.prefect_api import note_ephemeral
        from tasks.models import parse_models

        names = parse_models(models)
        note_ephemeral(settings)
        with progress_bars(enabled=not as_json and stderr.is_terminal):
            doc = training_flow(source="sample", models=names, home=str(settings.home))
        verdict = "promoted to champion" if doc["promoted"] else "not promoted"
        stderr.print(
            f"challenger v{doc['challenger_version']} {verdict}: {escape(doc['reason'])}\n"
            f"MLflow run {doc['run_id']}. Next: qt ui (Prefect + MLflow UIs), qt registry list, "
            "qt evaluate --model champion",
            highlight=False,
            soft_wrap=True,
        )
        m = doc["metrics"]
        rows = [[name, _fmt(v["auc"]), _fmt(v["log_loss"], 5)] for name, v in m["per_model"].items()]
        rows.append(["stacker", _fmt(m["oof_auc"]), _fmt(m["oof_log_loss"], 5)])
        rows.append(["climatology", "", _fmt(m["oof_log_loss_climatology"], 5)])
        stderr.print(
            f"stacker net Sharpe {m['backtest_sharpe']:.2f} (buy-and-hold {m['buy_and_hold_sharpe']:.2f}, "
            f"momentum fallback {m['momentum_fallback_sharpe']:.2f}) on the same rows",
            highlight=False,
        )
        doc = {**doc, "home": str(settings.home)}
        return doc, table("Walk-forward, out of fold", ["model", "AUC", "log loss"], rows)

    _run(home, as_json, command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Usage errors (an unknown option, a value of the wrong type) exit 2 like every other
    bad input, and under ``--json`` they too print one JSON document on stdout.
    """
    from typer import rich_utils
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # Typer vendors Click

    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="qt", standalone_mode=False)
    except NoArgsIsHelpError as err:
        err.show()
        sys.exit(0)
    except ClickException as err:
        if "--json" in args:
            emit_json({"error": f"usage: {err.format_message()}", "exit_code": err.exit_code})
        rich_utils.rich_format_error(err)
        sys.exit(err.exit_code)
    except typer.Abort:  # Ctrl-C at a prompt, before any command ran
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
