"""One causal feature pipeline for training and live.

:func:`symbol_features` turns one symbol's candles into feature columns; the same
function runs on years of history in training and on the newest
:attr:`FeatureSpec.min_history` candles in the live flow, and gives the same values.
:func:`feature_matrix` pools symbols, adds BTC's features to every symbol (aligned on open
time: the BTC candle that closes at the same moment), optional sentiment, and targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from core.errors import BadDataError
from tasks.features.groups import GROUPS, Candles, Columns, FeatureGroup, on_time_grid
from tasks.features.regime import REGIME_EXTRA_HISTORY, regime_features
from tasks.features.sentiment import sentiment_for
from tasks.labels import TARGET_COLUMNS, targets

#: Raw price/volume levels: kept for people and for models that need them; pooled models
#: should use :func:`scale_free_columns`.
RAW_LEVEL_COLUMNS = (
    "close", "volume", "ema_10", "ema_50", "macd", "macd_signal", "bb_upper", "bb_middle",
    "bb_lower", "atr_14", "volume_sma_20", "high_low_range",
)  # fmt: skip
CROSS_ASSET_COLUMNS = ("log_ret_1", "log_ret_24", "realized_vol_24", "rsi_14", "adx_14")
#: At most this share of NaN in a feature after warm-up before the data counts as unusable.
MAX_NAN_SHARE = 0.05


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to compute.

    Attributes:
        groups: names of :data:`GROUPS` to compute.
        regime: add the regime detector's columns (needs ``base`` and ``trend``).
        cross_asset_symbol: whose features every symbol also gets (None: none).
        extra: further groups (plug-ins; tests use this for a deliberately leaky one).
    """

    groups: tuple[str, ...] = tuple(GROUPS)
    regime: bool = True
    cross_asset_symbol: str | None = "BTCUSDT"
    extra: tuple[FeatureGroup, ...] = field(default=())

    @property
    def min_history(self) -> int:
        """Candles needed for every feature of the newest row to be exact (see groups.py)."""
        need = max([GROUPS[g].min_history for g in self.groups] + [g.min_history for g in self.extra])
        return need + (REGIME_EXTRA_HISTORY if self.regime else 0)


def symbol_features(
    candles: pd.DataFrame, spec: FeatureSpec | None = None, step_ms: int | None = None
) -> pd.DataFrame:
    """All feature columns of one symbol, indexed like ``candles`` (``open_time``).

    Row t uses only candles at or before t. The first ``spec.min_history - 1`` rows are
    warm-up (values not yet independent of where the data started); callers trim them.
    Features are computed on the time grid (``step_ms``; default: the smallest spacing),
    so a lag of k bars is k intervals across maintenance gaps too (see ``on_time_grid``).
    """
    spec = spec or FeatureSpec()
    step = pd.Timedelta(milliseconds=step_ms) if step_ms is not None else None
    grid, missing = on_time_grid(candles, step)
    view = Candles.from_frame(grid, missing)
    columns: Columns = {}
    for group in [GROUPS[name] for name in spec.groups] + list(spec.extra):
        columns.update(group.compute(view))
    if spec.regime:
        columns.update(regime_features(view, columns))
    return pd.DataFrame(columns, index=grid.index)[~missing]


def feature_matrix(
    candles: Mapping[str, pd.DataFrame],
    step_ms: int,
    spec: FeatureSpec | None = None,
    horizon: int = 1,
    include_unlabeled: bool = False,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    sentiment: pd.DataFrame | None = None,
    symbols: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The training matrix: ``symbol``, ``open_time``, features and ``target_*`` columns.

    Args:
        candles: symbol → its whole stored history (store frames); include the
            cross-asset symbol when the spec names one.
        step_ms: the interval in milliseconds.
        spec: which features.
        horizon: target horizon in bars.
        include_unlabeled: keep the newest rows whose target is not known yet (what the
            live flow predicts on); otherwise they are dropped, never filled.
        start: first open time to return (history before it still feeds the features).
        end: last open time to return.
        sentiment: scores from :func:`tasks.features.sentiment.load_sentiment`, if any.
        symbols: which symbols to return (default: all of ``candles``); the others only
            feed cross-asset columns.

    Raises:
        BadDataError: a symbol has too little history or NaN-heavy features (naming it).
    """
    spec = spec or FeatureSpec()
    wanted = list(symbols) if symbols is not None else list(candles)
    ref = spec.cross_asset_symbol
    if ref is not None and ref not in candles:
        raise BadDataError(f"cross-asset features need {ref} candles: ingest {ref} or turn them off")
    needed = dict.fromkeys([*wanted, ref] if ref else wanted)  # each symbol computed once
    computed = {s: _warm_features(s, candles[s], spec, step_ms) for s in needed}
    cross = None
    if ref is not None:
        prefix = ref.removesuffix("USDT").lower()
        cross = computed[ref][list(CROSS_ASSET_COLUMNS)].add_prefix(f"{prefix}_")
    frames = []
    for symbol in wanted:
        feats, history = computed[symbol], candles[symbol]
        if cross is not None:
            feats = feats.join(cross, how="left")
        if sentiment is not None:
            feats["sentiment_score"] = sentiment_for(
                sentiment, symbol, pd.DatetimeIndex(feats.index), step_ms
            )
        feats = feats.join(targets(history["close"], step_ms, horizon), how="left")
        if start is not None or end is not None:
            feats = feats.loc[start:end]
        _check_nan_share(symbol, feats)
        if not include_unlabeled:
            feats = feats[feats["target_log_return"].notna()]
        frames.append(feats.reset_index().assign(symbol=symbol))
    if not frames:
        raise ValueError("feature_matrix needs at least one symbol")
    matrix = pd.concat(frames, ignore_index=True)
    first = ["symbol", "open_time"]
    return matrix[first + [c for c in matrix.columns if c not in first]]


def feature_columns(matrix: pd.DataFrame) -> list[str]:
    """Feature columns of a matrix: everything but identifiers and targets."""
    return [c for c in matrix.columns if c not in ("symbol", "open_time") and c not in TARGET_COLUMNS]


def scale_free_columns(matrix: pd.DataFrame) -> list[str]:
    """Feature columns that do not depend on a symbol's price or volume scale."""
    return [c for c in feature_columns(matrix) if c not in RAW_LEVEL_COLUMNS]


def _warm_features(symbol: str, history: pd.DataFrame, spec: FeatureSpec, step_ms: int) -> pd.DataFrame:
    """A symbol's features without the warm-up rows (checked to have enough history)."""
    _check_history(symbol, history, spec)
    try:
        feats = symbol_features(history, spec, step_ms)
    except ValueError as exc:
        raise BadDataError(f"{symbol}: {exc}") from exc
    return feats.iloc[spec.min_history - 1 :]


def _check_history(symbol: str, history: pd.DataFrame, spec: FeatureSpec) -> None:
    if len(history) < spec.min_history:
        span = f"{history.index[0]} → {history.index[-1]}" if len(history) else "no candles"
        raise BadDataError(
            f"{symbol}: {len(history)} candles ({span}); features need at least {spec.min_history}"
        )


def _check_nan_share(symbol: str, feats: pd.DataFrame) -> None:
    cols = [c for c in feats.columns if c not in TARGET_COLUMNS]
    share = feats[cols].isna().mean()
    heavy = share[share > MAX_NAN_SHARE]
    if len(heavy) and len(feats):
        worst = ", ".join(f"{c} {s:.0%}" for c, s in heavy.sort_values(ascending=False).head(5).items())
        raise BadDataError(
            f"{symbol} {feats.index[0]} → {feats.index[-1]}: NaN-heavy features ({worst}); "
            "check for gaps or missing cross-asset candles"
        )


__all__ = [
    "GROUPS",
    "RAW_LEVEL_COLUMNS",
    "FeatureGroup",
    "FeatureSpec",
    "feature_columns",
    "feature_matrix",
    "scale_free_columns",
    "symbol_features",
]
