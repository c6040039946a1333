"""Strategy research: horizon × policy on the 10 shared pairs, chosen by nested walk-forward.

For each label horizon (1, 4, 24 bars by default) the base models are walked forward over
quarterly test windows (purged by the horizon, embargoed) and the stacker is walked
forward over their OOF P(up). Every policy of :func:`tasks.strategy.research.candidates`
then trades each horizon's stacked P(up) on the next bar's return, net of the market's
costs, beside buy-and-hold and the original's momentum fallback on the same rows. Each
policy is traded twice: with market entries (taker fee + slippage) and, as ``<policy>
maker``, with post-only limit entries at the decision bar's close that fill only when the
next candle's low (high, for a short) trades through the limit by 1 bp, paying the maker
fee (exits at market either way); the candles' high/low come from the research store. The
``nested`` row is what a user would have got: for each test fold, the horizon and policy
with the best net Sharpe on the earlier folds (flat when none beat 0), so no reported row
helped choose what traded it; ``nested, taker entries only`` and ``nested, maker entries
only`` are the same choice within each half of the grid (diagnostics). Each maker row (and
each nested row that picked maker candidates) also reports its fill rate, the share of
wanted entries filled, the return its taker twin earned while the order waited, and the
costs it saved. Each fold's universe is the top ``--top`` symbols by
quote volume over the 90 days before it (survivorship-free; all 10 shared pairs trade
from 2021-04, so with ``--top 10`` every pair is in every fold).

Reported rows: the test folds from the third on (fold 0 has no stacker, fold 1 is the
nested selection's first history). With the defaults, 14 quarterly folds from
2021-12-13 to 2025-06-15, the reported span is 2022-06 → 2025-06 (3 years).

Prints tables, writes bench/results/strategy.json, logs one MLflow run per table row (in
the experiment ``quantum-trader-strategy-research``, under ``--home``). The OOF tables are
cached in ``--home``; ``--refit`` recomputes them.

    .venv/bin/python bench/strategy.py                         # xgb,lgbm; 1/4/24; spot and futures
    .venv/bin/python bench/strategy.py --models xgb,lgbm,tft --horizons 1,24 --markets futures
    .venv/bin/mlflow ui --backend-store-uri sqlite:///.qt-research/mlflow/mlflow.db
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tasks import metrics  # noqa: E402
from tasks.backtest import Costs, baseline_positions  # noqa: E402
from tasks.models.stacker import PREFIX  # noqa: E402
from tasks.strategy.research import (  # noqa: E402
    FLAT,
    Candidate,
    backtest_entries,
    candidates,
    fold_sharpes,
    maker_figures,
    nested_choice,
    openings,
    positions,
    resting_bars,
    universe_as_of,
)

SHARED = ROOT.parent / "shared" / "data" / "binance"
STEP = pd.Timedelta(hours=1)
EXPERIMENT = "quantum-trader-strategy-research"
console = Console(stderr=True)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="xgb,lgbm", help="base families (comma-separated)")
    ap.add_argument("--horizons", default="1,4,24", help="label horizons in bars")
    ap.add_argument("--markets", default="spot,futures", help="spot (long only, 10 bps), futures (5 bps)")
    ap.add_argument("--folds", type=int, default=14, help="quarterly test windows")
    ap.add_argument("--test-days", type=int, default=1280, help="days covered by the test windows")
    ap.add_argument("--until", default="2025-06-15", help="end (exclusive) of the last test window")
    ap.add_argument("--top", type=int, default=10, help="universe size per fold (by trailing volume)")
    ap.add_argument("--profile", default="fast", choices=("fast", "full"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--home", type=Path, default=ROOT / ".qt-research", help="store, OOF cache, MLflow")
    ap.add_argument("--refit", action="store_true", help="recompute cached OOF tables")
    ap.add_argument("--no-track", action="store_true", help="do not log MLflow runs")
    return ap.parse_args()


def load(settings: Any) -> dict[str, pd.DataFrame]:
    """The shared 1h pairs in the research home's store (ingested once); symbol → candles."""
    from tasks.ingest import ingest_files
    from tasks.store import CandleStore

    store = CandleStore(settings.store_dir)
    files = sorted(SHARED.glob("*-1h.csv"))
    if not files:
        raise SystemExit(f"bench/strategy.py needs the shared candles in {SHARED} (not found)")
    for path in files:
        symbol = path.name.split("-")[0]
        if symbol not in store.symbols("1h", "spot"):
            ingest_files(symbol, "1h", "spot", [path], "files", settings)
    return {s: store.read(s, "1h", "spot") for s in store.symbols("1h", "spot")}


def _code_digest() -> str:
    """A digest of the code that makes an OOF table: tasks/models, tasks/features, the walk-forward."""
    root = Path(__file__).resolve().parents[1] / "tasks"
    files = sorted([*root.glob("models/*.py"), *root.glob("features/*.py"), root / "walkforward.py"])
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def oof_table(settings: Any, args: argparse.Namespace, horizon: int, names: list[str]) -> pd.DataFrame:
    """The walk-forward OOF table of one horizon (cached in the home by its set-up's hash)."""
    from tasks.features.dataset import features_from_store
    from tasks.models import ModelConfig
    from tasks.store import CandleStore, write_parquet_atomic
    from tasks.walkforward import WalkForward, walk_forward

    setup = {k: getattr(args, k) for k in ("folds", "test_days", "until", "profile", "seed")}
    setup["code"] = _code_digest()  # a change to the models, the stacker or the features recomputes
    key = hashlib.sha256(json.dumps({**setup, "h": horizon, "models": names}).encode()).hexdigest()[:10]
    path = settings.home / "strategy" / f"oof-h{horizon}-{key}.parquet"
    if path.exists() and not args.refit:
        console.print(f"h{horizon}: cached OOF table {path}")
        return pd.read_parquet(path)
    matrix = features_from_store(CandleStore(settings.store_dir), None, "1h", horizon=horizon)
    end = pd.Timestamp(args.until, tz="UTC")
    plan = replace(WalkForward.before(end, args.test_days, args.folds, STEP), horizon=horizon)
    config = ModelConfig(profile=args.profile, seed=args.seed, study_dir=settings.home / "optuna")
    began = time.perf_counter()
    with console.status(f"h{horizon}: walk-forward, {args.folds} folds × {', '.join(names)}"):
        result = walk_forward(matrix, names, config, plan)
    console.print(
        f"h{horizon}: walk-forward {time.perf_counter() - began:.0f} s, {len(result.oof):,} OOF rows"
    )
    oof = result.oof.assign(
        abs_return=result.oof["symbol"].map(_before(matrix, result.oof, "target_log_return", "abs_mean"))
    )
    write_parquet_atomic(oof, path)
    return oof


def _before(matrix: pd.DataFrame, oof: pd.DataFrame, column: str, how: str) -> dict[str, float]:
    """Per symbol, a statistic of ``column`` over the matrix rows before the first OOF row."""
    earlier = matrix[matrix["open_time"] < oof["open_time"].min()]
    groups = earlier.groupby("symbol")[column]
    values = groups.apply(lambda s: s.abs().mean()) if how == "abs_mean" else groups.median()
    return {str(k): float(v) for k, v in values.items()}


def stacker_check(oof: pd.DataFrame, names: list[str]) -> dict[str, Any]:
    """Stacker vs each base model on the stacker's rows: overall and per fold."""
    rows = oof[oof[f"{PREFIX}stacker"].notna()]
    out: dict[str, Any] = {"rows": len(rows), "models": {}}
    for name in [*names, "stacker"]:
        per_fold = [
            metrics.of_rows(g, f"{PREFIX}{name}")["log_loss"] for _, g in rows.groupby("fold", sort=True)
        ]
        out["models"][name] = {**metrics.of_rows(rows, f"{PREFIX}{name}"), "per_fold_log_loss": per_fold}
    best = min(names, key=lambda n: out["models"][n]["log_loss"])
    stacked = out["models"]["stacker"]
    out["best_single"] = best
    out["stacker_minus_best"] = stacked["log_loss"] - out["models"][best]["log_loss"]
    out["folds_stacker_le_best"] = int(
        sum(
            s <= b + 1e-12
            for s, b in zip(
                stacked["per_fold_log_loss"], out["models"][best]["per_fold_log_loss"], strict=True
            )
        )
    )
    return out


def research(
    base: pd.DataFrame,
    oofs: dict[int, pd.DataFrame],
    candles: dict[str, pd.DataFrame],
    costs: Costs,
    top: int,
) -> dict[str, Any]:
    """Every candidate, the nested choice and the baselines on the same reported rows, one market."""
    bars_per_year = pd.Timedelta(days=365.25) / STEP
    any_oof = next(iter(oofs.values()))
    stacked = any_oof[any_oof[f"{PREFIX}stacker"].notna()]
    fold_ids = sorted(int(f) for f in stacked["fold"].unique())
    starts = [stacked.loc[stacked["fold"] == f, "open_time"].min() for f in fold_ids]
    edges = [*starts, stacked["open_time"].max() + STEP]
    rows = base[(base["open_time"] >= edges[0]) & (base["open_time"] < edges[-1])].reset_index(drop=True)
    rows = rows.join(resting_bars(rows, candles, STEP))  # the bar a limit order placed at t's close rests in
    fold_of = np.searchsorted(
        np.array(edges[1:-1], dtype="datetime64[ns]"),
        rows["open_time"].to_numpy(dtype="datetime64[ns]"),
        side="right",
    )
    universes = [universe_as_of(candles, start, top) for start in starts]
    member = np.array([s in universes[f] for s, f in zip(rows["symbol"], fold_of, strict=True)])
    typical_vol = {
        str(k): float(v)
        for k, v in base[base["open_time"] < edges[0]].groupby("symbol")["realized_vol_24"].median().items()
    }

    paths: dict[str, pd.Series] = {}
    fills: dict[str, pd.Series] = {}  # maker candidates: rows where a limit entry filled
    plans: dict[str, Candidate] = {}
    for h, oof in oofs.items():
        keyed = oof.set_index(["symbol", "open_time"])
        p = keyed[f"{PREFIX}stacker"].reindex(pd.MultiIndex.from_frame(rows[["symbol", "open_time"]]))
        p = pd.Series(p.fillna(0.5).to_numpy(), index=rows.index)  # no label yet (end, gaps): no edge
        abs_return = oof.groupby("symbol")["abs_return"].first().to_dict()
        for c in candidates([h]):
            pos = positions(rows, p, c, costs, abs_return, typical_vol)
            paths[c.key] = pos.where(member, 0.0)
            plans[c.key] = c
            if c.maker:
                fills[c.key] = openings(rows, pos) & member
    for name, pos in baseline_positions(rows, STEP, costs.long_only).items():
        if name != "always_flat":
            paths[name] = pos.where(member, 0.0)

    sharpes = {
        k: fold_sharpes(backtest_entries(rows, pos, costs, STEP, fills.get(k)).net, edges, bars_per_year)
        for k, pos in paths.items()
    }
    # The nested choice over the whole grid (the headline row), and as diagnostics over each
    # kind of entry alone (the taker-only one is the grid before maker entries were added).
    grids = {
        "nested": list(plans),
        "nested, taker entries only": [k for k, c in plans.items() if not c.maker],
        "nested, maker entries only": [k for k, c in plans.items() if c.maker],
    }
    chosen: dict[str, list[str]] = {}
    twins: dict[str, pd.Series] = {}  # the chosen candidates' taker twins, fold by fold
    for row, keys in grids.items():
        chosen[row] = nested_choice({k: sharpes[k] for k in keys}, first=1)
        paths[row] = pd.Series(0.0, index=rows.index)
        fills[row] = pd.Series(False, index=rows.index)
        twins[row] = pd.Series(0.0, index=rows.index)
        for f, key in enumerate(chosen[row], start=1):
            if key != FLAT:
                fold = fold_of == f
                paths[row][fold] = paths[key][fold]
                twins[row][fold] = paths[twin(plans[key])][fold]
                if key in fills:
                    fills[row][fold] = fills[key][fold]
        sharpes[row] = fold_sharpes(
            backtest_entries(rows, paths[row], costs, STEP, fills[row]).net, edges, bars_per_year
        )

    reported = fold_of >= 1
    out_rows = []
    results = {}
    for key, pos in paths.items():
        maker = fills[key][reported] if key in fills else None
        bt = backtest_entries(rows[reported], pos[reported], costs, STEP, maker)
        results[key] = bt
        m = bt.metrics
        years = len(bt.net) / bars_per_year
        out_rows.append(
            {
                "row": key,
                "horizon": plans[key].horizon if key in plans else None,
                "policy": asdict(plans[key]) if key in plans else key,
                "maker": plans[key].maker if key in plans else None,
                "sharpe": m["sharpe"],
                "annual_return": (1 + m["total_return"]) ** (1 / years) - 1 if years > 0 else 0.0,
                "total_return": m["total_return"],
                "max_drawdown": m["max_drawdown"],
                "turnover_per_year": m["turnover"] / years if years > 0 else 0.0,
                "trades": m["trades"],
                "exposure": m["exposure"],
                "fees_paid": m["fees_paid"],
                "costs_per_year": float(bt.cost.sum()) / years if years > 0 else 0.0,
                "sharpe_per_fold": sharpes[key][1:],
            }
        )
    sharpe_of = {r["row"]: r["sharpe"] for r in out_rows}
    for r in out_rows:  # maker entries against their taker twins, on the reported rows they traded
        key = r["row"]
        if key in plans and plans[key].maker:
            taker, span, twin_row = paths[twin(plans[key])], reported, twin(plans[key])
        elif key in chosen:
            picks = [f for f, k in enumerate(chosen[key], start=1) if k in plans and plans[k].maker]
            if not picks:
                continue
            taker, span, twin_row = twins[key], np.isin(fold_of, picks), None
        else:
            continue
        figures: dict[str, Any] = maker_figures(rows[span], taker[span], paths[key][span], STEP)
        span_years = rows.loc[span, "open_time"].nunique() / bars_per_year
        as_taker = backtest_entries(rows[span], taker[span], costs, STEP).cost.sum()
        as_maker = backtest_entries(rows[span], paths[key][span], costs, STEP, fills[key][span]).cost.sum()
        figures["costs_saved_per_year"] = float(as_taker - as_maker) / span_years if span_years > 0 else 0.0
        figures["folds"] = len(np.unique(fold_of[span]))
        if twin_row is not None:
            figures["twin"] = twin_row
            figures["twin_sharpe"] = sharpe_of[twin_row]
        r["entries"] = figures
    return {
        "market": costs.market,
        "costs": asdict(costs),
        "reported_start": str(edges[1]),
        "reported_end": str(edges[-1]),
        "fold_starts": [str(s) for s in starts],
        "universe_per_fold": universes,
        "nested_choice": dict(zip([str(s) for s in starts[1:]], chosen["nested"], strict=True)),
        "nested_choices": {
            row: dict(zip([str(s) for s in starts[1:]], picks, strict=True)) for row, picks in chosen.items()
        },
        "rows": out_rows,
    }


def twin(candidate: Candidate) -> str:
    """The row of a maker candidate's taker twin (the candidate's own row when it is a taker)."""
    return replace(candidate, name=candidate.name.removesuffix(" maker"), maker=False).key


def show(result: dict[str, Any]) -> None:
    table = Table(
        title=f"{result['market']}: {result['reported_start'][:10]} → {result['reported_end'][:10]}"
    )
    for col in ("row", "Sharpe", "ann. return", "max DD", "turnover/yr", "trades", "exposure"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in result["rows"]:
        table.add_row(
            r["row"],
            f"{r['sharpe']:.2f}",
            f"{r['annual_return']:+.1%}",
            f"{r['max_drawdown']:.0%}",
            f"{r['turnover_per_year']:.0f}",
            f"{r['trades']:.0f}",
            f"{r['exposure']:.0%}",
        )
    Console().print(table)
    entries = Table(title=f"{result['market']}: maker entries against their taker twins (reported rows)")
    columns = ("row", "Sharpe", "taker twin", "Δ", "orders", "fill rate", "entries filled", "missed/yr")
    for col in (*columns, "costs saved/yr"):
        entries.add_column(col, justify="left" if col == "row" else "right")
    for r in result["rows"]:
        e = r.get("entries")
        if e is None:
            continue
        twin_sharpe = e.get("twin_sharpe")
        entries.add_row(
            r["row"],
            f"{r['sharpe']:.2f}",
            "" if twin_sharpe is None else f"{twin_sharpe:.2f}",
            "" if twin_sharpe is None else f"{r['sharpe'] - twin_sharpe:+.2f}",
            f"{e['orders']:.0f}",
            f"{e['fill_rate']:.0%}",
            f"{e['entries_filled']:.0%}",
            f"{e['missed_per_year']:+.1%}",
            f"{e['costs_saved_per_year']:+.1%}",
        )
    Console().print(entries)
    for row, picks in result["nested_choices"].items():
        console.print(f"{row}, choice per fold: " + ", ".join(f"{k[:10]} {v}" for k, v in picks.items()))


def track(settings: Any, document: dict[str, Any]) -> str:
    """One parent run, and one child run per (market, table row) with its figures."""
    import mlflow

    from tasks.tracking import experiment_id, git_commit, use_store

    use_store(settings)
    mlflow.set_experiment(experiment_id=experiment_id(settings, EXPERIMENT))  # artifacts under --home
    with mlflow.start_run(run_name=f"strategy research {time.strftime('%Y-%m-%d %H:%M')}") as parent:
        mlflow.set_tags({"git_commit": git_commit(), "models": ",".join(document["models"])})
        mlflow.log_params(
            {
                "horizons": document["horizons"],
                "folds": document["folds"],
                "until": document["until"],
                "top": document["top"],
            }
        )
        for h, check in document["stacker"].items():
            mlflow.log_metrics({f"h{h}_stacker_minus_best": check["stacker_minus_best"]})
        mlflow.log_dict(document, "strategy.json")
        for market in document["markets"]:
            for r in market["rows"]:
                with mlflow.start_run(run_name=f"{market['market']} {r['row']}", nested=True):
                    policy = r["policy"] if isinstance(r["policy"], dict) else {"name": r["policy"]}
                    mlflow.log_params({"market": market["market"], **{k: str(v) for k, v in policy.items()}})
                    mlflow.log_metrics(
                        {
                            k: float(r[k])
                            for k in (
                                "sharpe",
                                "annual_return",
                                "total_return",
                                "max_drawdown",
                                "turnover_per_year",
                                "trades",
                                "exposure",
                                "fees_paid",
                            )
                        }
                    )
                    entries = r.get("entries", {})
                    mlflow.log_metrics({k: float(v) for k, v in entries.items() if isinstance(v, float)})
                    for f, s in enumerate(r["sharpe_per_fold"]):
                        mlflow.log_metric("fold_sharpe", s, step=f)
        return str(parent.info.run_id)


def main() -> None:
    from core.settings import load_settings
    from tasks.features.dataset import features_from_store
    from tasks.store import CandleStore

    args = parse()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    horizons = [int(h) for h in args.horizons.split(",")]
    settings = load_settings(args.home)
    began = time.perf_counter()
    candles = load(settings)
    base = features_from_store(CandleStore(settings.store_dir), None, "1h", horizon=1)
    oofs = {h: oof_table(settings, args, h, names) for h in horizons}
    checks = {h: stacker_check(oof, names) for h, oof in oofs.items()}
    table = Table(title="Stacker vs the best single model (OOF, the stacker's rows)")
    for col in ("horizon", "rows", "stacker", "best single", "Δ", "folds ≤ best", "AUC", "ECE"):
        table.add_column(col, justify="right")
    for h, c in checks.items():
        s, b = c["models"]["stacker"], c["models"][c["best_single"]]
        table.add_row(
            str(h),
            f"{c['rows']:,}",
            f"{s['log_loss']:.5f}",
            f"{c['best_single']} {b['log_loss']:.5f}",
            f"{c['stacker_minus_best']:+.5f}",
            f"{c['folds_stacker_le_best']}/{len(s['per_fold_log_loss'])}",
            f"{s['auc']:.4f}",
            f"{s['ece']:.4f}",
        )
    Console().print(table)
    markets = []
    for market in [m.strip() for m in args.markets.split(",") if m.strip()]:
        result = research(base, oofs, candles, Costs.from_settings(settings, market), args.top)
        show(result)
        markets.append(result)
    document = {
        "benchmark": "strategy",
        "machine": f"{platform.machine()} {platform.system()}",
        "models": names,
        "horizons": horizons,
        "folds": args.folds,
        "test_days": args.test_days,
        "until": args.until,
        "top": args.top,
        "profile": args.profile,
        "seed": args.seed,
        "stacker": {str(h): c for h, c in checks.items()},
        "markets": markets,
        "seconds": time.perf_counter() - began,
    }
    if not args.no_track:
        document["mlflow_run_id"] = track(settings, document)
        console.print(f"MLflow run {document['mlflow_run_id']} ({settings.tracking_uri})")
    out = ROOT / "bench" / "results" / "strategy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str))
    console.print(f"→ {out} ({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
