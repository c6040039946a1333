"""The feature matrix from the candle store (``qt features``, the training flow, live)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from core.candles import interval_ms
from core.errors import BadConfigError
from tasks.features import FeatureSpec, feature_matrix
from tasks.features.sentiment import load_sentiment
from tasks.store import CandleStore


def features_from_store(
    store: CandleStore,
    symbols: Sequence[str] | None,
    interval: str,
    market: str = "spot",
    spec: FeatureSpec | None = None,
    horizon: int = 1,
    include_unlabeled: bool = False,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    sentiment_csv: Path | None = None,
) -> pd.DataFrame:
    """Feature matrix of stored symbols (default: all stored for the interval and market).

    The whole stored history of each symbol feeds the indicators; ``start``/``end`` only
    choose the rows returned.

    Raises:
        BadConfigError: nothing stored, or a requested symbol is missing (naming it).
        BadDataError: too little history or NaN-heavy features (from ``feature_matrix``).
    """
    spec = spec or FeatureSpec()
    stored = store.symbols(interval, market)
    chosen = list(symbols) if symbols else stored
    if not chosen:
        raise BadConfigError(f"no stored {interval} {market} candles; run qt ingest first")
    missing = [s for s in chosen if s not in stored]
    if missing:
        raise BadConfigError(f"no stored {interval} {market} candles for {missing}; stored: {stored}")
    needed = chosen + [s for s in [spec.cross_asset_symbol] if s and s not in chosen and s in stored]
    candles = {s: store.read(s, interval, market) for s in needed}
    return feature_matrix(
        candles,
        interval_ms(interval),
        spec,
        horizon=horizon,
        include_unlabeled=include_unlabeled,
        start=start,
        end=end,
        sentiment=load_sentiment(sentiment_csv) if sentiment_csv else None,
        symbols=chosen,
    )
