"""Prefect task around the feature matrix, for the training flow to compose."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from core.settings import Settings
from tasks.features import FeatureSpec
from tasks.features.dataset import features_from_store
from tasks.store import CandleStore


@task(name="build-features", cache_policy=NO_CACHE)
def build_features_task(
    settings: Settings,
    symbols: list[str] | None,
    interval: str,
    market: str = "spot",
    horizon: int = 1,
    include_unlabeled: bool = False,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    sentiment_csv: Path | None = None,
) -> pd.DataFrame:
    """The feature matrix of stored candles (see ``tasks.features.dataset``)."""
    return features_from_store(
        CandleStore(settings.store_dir),
        symbols,
        interval,
        market,
        FeatureSpec(),
        horizon=horizon,
        include_unlabeled=include_unlabeled,
        start=start,
        end=end,
        sentiment_csv=sentiment_csv,
    )
