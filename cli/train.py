"""``qt walkforward``, ``qt retrain``, ``qt evaluate``: models, the training flow, evaluation."""

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
    ModelsOpt,
    ProfileOpt,
    StartOpt,
    SymbolsOpt,
    TrialsOpt,
    app,
    as_version,
    parse_symbols,
    run,
)
from cli.output import progress_bars, stderr, table
from core.settings import Settings


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
        matrix = features_from_store(CandleStore(settings.store_dir), parse_symbols(symbols), ival, market)
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
        zero = ", ".join(summary.get("stacker_zero_weight", [])) or "none"
        stderr.print(
            f"{summary['rows']:,} OOF rows compared; stacker weights: {weights} (weight 0: {zero})",
            highlight=False,
        )
        stderr.print(f"OOF table → {target}", highlight=False)
        return document, table(
            "Walk-forward (out of fold, same rows)",
            ["model", "AUC", "min fold AUC", "log loss", "climatology", "ECE", "folds < clim"],
            rows,
        )

    run(home, as_json, command)


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
        float,
        typer.Option(
            "--margin",
            min=0,
            help="Per-row log-loss gain over the champion the gate's paired test must beat.",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed for every random choice.")] = 42,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or gpu (neural models).")] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Fit processes, or LocalCluster workers with QT_TASK_RUNNER=dask (default: cores).",
        ),
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
        if workers:  # the runner QT_TASK_RUNNER names, of this size
            from flows.runners import cpu_runner

            flow = training_flow.with_options(task_runner=cpu_runner(settings, workers))
        with progress_bars(enabled=not as_json and stderr.is_terminal):
            doc = flow(
                symbols=parse_symbols(symbols), interval=interval or settings.default_interval, market=market,
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
        title = f"Promotion gate (champion: {as_version(doc['champion'])})"
        return doc, table(title, ["check", "result", "detail"], rows)

    run(home, as_json, command)


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

    Default range: from the first bar after the model's training data and after the rows
    its promotion gate judged it on, to the newest labelled bar, so the figures are out of
    sample and did not choose the model (an earlier --start is flagged). The backtest
    trades the model's own registered policy and edge scale.
    """

    def command(settings: Settings) -> tuple[dict[str, Any], Any]:
        import pandas as pd

        from core.candles import check_market, interval_ms
        from core.timeutil import parse_utc
        from model_registry.evaluate import evaluate_ensemble
        from model_registry.registry import describe_version, load_ensemble
        from tasks.backtest import Costs
        from tasks.features.dataset import features_from_store
        from tasks.store import CandleStore

        ival = interval or settings.default_interval
        step = pd.Timedelta(milliseconds=interval_ms(ival))
        check_market(market)
        ensemble, version = load_ensemble(settings, ival, model, market=market)
        gated = describe_version(settings, ival, version, market=market)["tags"].get("gate.rows_until")
        matrix = features_from_store(CandleStore(settings.store_dir), parse_symbols(symbols), ival, market)
        report = evaluate_ensemble(
            ensemble,
            matrix,
            step,
            Costs.from_settings(settings, market),
            parse_utc(start, "--start"),
            parse_utc(end, "--end"),
            pd.Timestamp(gated) if gated else None,
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
            + (" (IN SAMPLE: overlaps training data)" if report["in_sample"] else "")
            + (" (includes the rows the promotion gate judged it on)" if report["gate_rows"] else ""),
            highlight=False,
        )
        return document, table(
            "Evaluation (same rows, net of costs)", ["model", "AUC", "log loss", "Sharpe"], table_rows
        )

    run(home, as_json, command, writes=False)
