"""PNG figures for MLflow (matplotlib, headless): calibration, equity, importances, weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.backtest import BacktestResult


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(
    curves: Mapping[str, pd.DataFrame], path: Path, title: str = "Reliability (out of fold)"
) -> Path:
    """Observed up rate against mean predicted P(up) per bin, one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    lo, hi = 0.5, 0.5
    for name, curve in curves.items():
        ax.plot(curve["predicted"], curve["observed"], marker="o", label=name)
        lo = min(lo, float(curve["predicted"].min()), float(curve["observed"].min()))
        hi = max(hi, float(curve["predicted"].max()), float(curve["observed"].max()))
    pad = max(0.02, (hi - lo) * 0.1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("mean predicted P(up)")
    ax.set_ylabel("observed share of up bars")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def equity_curves(tests: Mapping[str, BacktestResult], path: Path, highlight: str = "stacker") -> Path:
    """Equity curves net of costs: the product's model against baselines and single models."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, result in tests.items():
        # the product's curve in black on top, so it never blends with a single model's colour
        style = {"linewidth": 2.4, "color": "black", "zorder": 5} if name == highlight else {"linewidth": 1.0}
        ax.plot(result.equity.index, result.equity.to_numpy(), label=name, **style)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("equity (start = 1), net of fees, slippage, funding")
    ax.set_title("Walk-forward test windows: equity vs baselines")
    ax.legend(fontsize=8, ncol=2)
    fig.autofmt_xdate()
    return _save(fig, path)


def bar_chart(values: Mapping[str, float], path: Path, title: str, top: int = 25) -> Path:
    """Horizontal bars of the ``top`` largest values (importances, stacker weights)."""
    plt = _pyplot()
    items = sorted(values.items(), key=lambda kv: abs(kv[1]), reverse=True)[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(items) + 1)))
    labels = [k for k, _ in items]
    ax.barh(labels, np.array([v for _, v in items]))
    ax.set_title(title)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
