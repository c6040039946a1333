"""Benchmarks: each prints a table and writes its figures to ``bench/results/<name>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, document: Any) -> Path:
    """Write a benchmark's figures to ``bench/results/<name>.json`` and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def train_champion(settings: Any, matrix: Any, before: Any, days: int) -> Any:
    """A small XGBoost + LightGBM ensemble on ``matrix`` rows before ``before``, registered as champion.

    ``days`` of walk-forward (2 folds) feed the stacker. Returns the ensemble.
    """
    import pandas as pd

    from model_registry.ensemble import fit_ensemble
    from model_registry.registry import register, set_alias
    from tasks.backtest import Costs
    from tasks.models import ModelConfig
    from tasks.walkforward import WalkForward, walk_forward

    rows = matrix[matrix["open_time"] < before]
    plan = WalkForward(before - pd.Timedelta(days=days), before, folds=2)
    config = ModelConfig(seed=1, device="cpu")
    trained = walk_forward(rows, ["xgb", "lgbm"], config, plan)
    assert trained.stacker is not None
    ensemble = fit_ensemble(rows, ["xgb", "lgbm"], config, plan, trained.stacker, "1h", Costs())
    set_alias(settings, "1h", "champion", register(settings, ensemble, rows.tail(2)))
    return ensemble


SHARED_1H = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance"


def shared_candles(rows: int) -> dict[str, Any] | None:
    """The newest ``rows`` store-frame candles of each shared 1h pair; None (saying so) when absent."""
    from core.candles import to_store_frame
    from tasks.ingest.files import read_candle_file

    files = sorted(SHARED_1H.glob("*-1h.csv"))
    if not files:
        print(f"skipped: no shared 1h candles in {SHARED_1H} (the bench reads ../shared)")
        return None
    out = {}
    for path in files:
        raw = read_candle_file(path)
        out[path.name.split("-")[0]] = to_store_frame(raw.drop(columns=["source_file", "source_row"])).iloc[
            -rows:
        ]
    return out
