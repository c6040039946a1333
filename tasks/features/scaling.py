"""The learn/infer split for anything fitted on features (Qlib's learn/infer keys).

The features themselves are pure functions of past candles and fit nothing. What models
fit on top of them (here: standardisation for the neural models) is learned on the
training window only and then applied, frozen, to later rows — never refitted on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def split_learn_infer(matrix: pd.DataFrame, until: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows to learn from (``open_time <= until``) and rows to infer on (after it)."""
    learn = matrix["open_time"] <= until
    return matrix[learn], matrix[~learn]


@dataclass(frozen=True)
class Standardizer:
    """Per-column mean/std learned on a training window, applied unchanged afterwards.

    Attributes:
        mean: column → mean over the training rows.
        std: column → standard deviation over the training rows (1 where it was 0).
        fitted_until: last open time the statistics saw.
    """

    mean: pd.Series
    std: pd.Series
    fitted_until: pd.Timestamp

    @classmethod
    def fit(cls, learn: pd.DataFrame, columns: Sequence[str]) -> Standardizer:
        """Learn the statistics from the training rows only (NaN ignored)."""
        if learn.empty:
            raise ValueError("cannot fit a Standardizer on no rows")
        values = learn[list(columns)].astype(np.float64)
        std = values.std(ddof=0)
        return cls(
            mean=values.mean(),
            std=std.where(std > 0, 1.0),
            fitted_until=pd.Timestamp(learn["open_time"].max()),
        )

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``frame`` with the fitted columns standardised."""
        out = frame.copy()
        cols = list(self.mean.index)
        out[cols] = (frame[cols].astype(np.float64) - self.mean) / self.std
        return out
