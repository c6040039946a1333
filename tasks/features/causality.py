"""Proof of no look-ahead: a feature at t must not change when rows after t change.

:func:`causality_violations` recomputes features on prefixes ``candles[:t]`` and compares
their last row with row ``t - 1`` of the features of the whole series. The same check on
the newest ``min_history`` candles proves that the live flow, which only has those, sees
the same values as training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

FeatureFn = Callable[[pd.DataFrame], pd.DataFrame]


def causality_violations(
    compute: FeatureFn,
    candles: pd.DataFrame,
    cuts: Iterable[int],
    window: int | None = None,
    rtol: float = 1e-12,
) -> dict[str, list[int]]:
    """Features whose value at a cut differs between the truncated and the whole series.

    Args:
        compute: candles → features (same index).
        candles: one symbol's candles, oldest first.
        cuts: row counts t; the truncated input is ``candles[:t]`` (or its last ``window``
            rows when given) and its last row is compared with row ``t - 1`` of the whole.
        window: compare using only the newest ``window`` candles before each cut.
        rtol: relative tolerance (NaN equals NaN).

    Returns:
        feature name → the cuts where it differed (empty when causal).
    """
    whole = compute(candles)
    violations: dict[str, list[int]] = {}
    for cut in cuts:
        lo = 0 if window is None else max(0, cut - window)
        partial = compute(candles.iloc[lo:cut]).iloc[-1]
        expected = whole.iloc[cut - 1]
        a, b = partial.to_numpy(dtype=np.float64), expected.to_numpy(dtype=np.float64)
        same = np.isclose(a, b, rtol=rtol, atol=0.0, equal_nan=True)
        for name in whole.columns[~same]:
            violations.setdefault(str(name), []).append(cut)
    return violations
