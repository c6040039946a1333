"""Targets: the next-bar log return (regression) and whether it is up (classification)."""

from __future__ import annotations

import numpy as np
import pandas as pd

TARGET_COLUMNS = ("target_log_return", "target_up")


def targets(close: pd.Series, step_ms: int, horizon: int = 1) -> pd.DataFrame:
    """Targets of each candle, from the close ``horizon`` intervals later *by time*.

    A candle whose future candle is missing (the end of the data, or a gap) has NaN
    targets; callers drop such rows, never fill them.

    Args:
        close: closes indexed by UTC ``open_time``.
        step_ms: the interval in milliseconds.
        horizon: how many intervals ahead (default 1: the next bar).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    future = close.reindex(close.index + pd.Timedelta(milliseconds=step_ms * horizon)).to_numpy()
    log_return = np.log(future / close.to_numpy())
    up = np.where(np.isnan(log_return), np.nan, (log_return > 0).astype(np.float64))
    return pd.DataFrame({"target_log_return": log_return, "target_up": up}, index=close.index)
