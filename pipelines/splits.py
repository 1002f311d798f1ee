"""Temporal splits: the holdout, and expanding-window CV folds by season.

The holdout is every row with time >= the spec's `holdout_start`; only `train` reads it.
Inside the training window, fold k validates on one season and trains on all earlier
seasons (less an optional gap), so a model never learns from the future it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from pipelines.errors import PodiumError


@dataclass(frozen=True)
class Fold:
    """One time-ordered split: train on `train_seasons`, validate on `valid_season`."""

    index: int
    train_seasons: tuple[int, ...]
    valid_season: int
    train_rows: np.ndarray
    valid_rows: np.ndarray

    def describe(self) -> dict[str, object]:
        return {
            "fold": self.index,
            "train": f"{self.train_seasons[0]}-{self.train_seasons[-1]}",
            "valid": self.valid_season,
            "train_rows": int(len(self.train_rows)),
            "valid_rows": int(len(self.valid_rows)),
        }


def seasons(times: pd.Series) -> np.ndarray:
    """The season (calendar year) of each row's time."""
    return pd.to_datetime(times).dt.year.to_numpy()


def season_folds(times: pd.Series, n_folds: int, gap: int = 0) -> list[Fold]:
    """Expanding-window folds: the last `n_folds` seasons validate, one each, in order."""
    year = seasons(times)
    distinct = np.unique(year)
    if len(distinct) < n_folds + 1 + gap:
        raise PodiumError(
            f"the training window has {len(distinct)} seasons ({', '.join(map(str, distinct))}); "
            f"{n_folds} folds with a gap of {gap} need at least {n_folds + 1 + gap}. "
            "Lower cv.folds or widen the window (train_start / holdout_start)."
        )
    folds = []
    for index, valid in enumerate(distinct[-n_folds:]):
        train = distinct[distinct < valid - gap]
        folds.append(
            Fold(
                index,
                tuple(int(s) for s in train),
                int(valid),
                np.flatnonzero(np.isin(year, train)),
                np.flatnonzero(year == valid),
            )
        )
    return folds


def check_before_holdout(times: pd.Series, holdout_start: date) -> None:
    """Fail loudly if any row of the holdout reached the training data."""
    if len(times) and pd.to_datetime(times).max() >= pd.Timestamp(holdout_start):
        raise AssertionError(f"holdout rows (time >= {holdout_start}) reached the training data")
