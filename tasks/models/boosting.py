"""Gradient-boosted classifiers (XGBoost, LightGBM) on the pooled feature matrix.

Both read the scale-free features plus ``symbol`` as a category, stop early on the first
half of the validation window, and are tuned there by Optuna when asked (nested: only
rows of the training window are ever seen). Trained on log loss, their P(up) is close to
calibrated already; Platt scaling on the validation window's second half (parameter
``calibrate``) is off by default because it measured worse out of sample: on 10 symbols,
4 quarterly folds to 2025-06-15, LightGBM's OOF log loss was 0.6918 with it and 0.6908
without (climatology 0.6932). The stacker recalibrates the combination anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import abstractmethod
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from tasks.features import scale_free_columns
from tasks.models.base import (
    ModelConfig,
    Platt,
    ProbaModel,
    binary_log_loss,
    check_features,
    labels,
    split_valid,
)

log = logging.getLogger(__name__)


class BoostingModel(ProbaModel):
    """Shared plumbing: columns, the symbol category, Optuna, early stopping, Platt."""

    defaults: ClassVar[dict[str, dict[str, Any]]]

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.columns: list[str] = []
        self.symbols: list[str] = []
        self.calibrator = Platt()
        self.importance: dict[str, float] = {}

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> Self:
        """Tune (optionally), fit with early stopping, then calibrate."""
        y_train, y_valid = labels(train, self.name), labels(valid, self.name)
        self.columns = scale_free_columns(train)
        self.symbols = sorted(train["symbol"].unique())
        early, late = split_valid(valid)
        params = self.params(self.defaults)
        if self.config.trials > 0:
            params = {**params, **self._tune(train, early, params)}
        self.report["params"] = params
        self._train(params, self._x(train), y_train, self._x(early), labels(early, self.name))
        raw_late = self._raw(self._x(late))
        y_late = labels(late, self.name)
        if params.get("calibrate", False):
            self.calibrator = Platt.fit(raw_late, y_late, self.config.seed)
        self.report.update(
            valid_log_loss_raw=binary_log_loss(y_late, raw_late),
            valid_log_loss=binary_log_loss(y_late, self.calibrator(raw_late)),
            train_rows=len(train),
            valid_rows=len(y_valid),
        )
        self.importance = self._importance()
        top = sorted(self.importance.items(), key=lambda kv: kv[1], reverse=True)[:30]
        self.report["importance"] = dict(top)
        return self

    def predict_proba(self, frame: pd.DataFrame, context: pd.DataFrame | None = None) -> pd.Series:
        """Calibrated P(up) of every row (features may be NaN: the trees route them)."""
        if not self.columns:
            raise RuntimeError(f"{self.name}: predict_proba before fit")
        check_features(frame, self.columns, self.name)
        return pd.Series(self.calibrator(self._raw(self._x(frame))), index=frame.index, name=self.name)

    def _x(self, frame: pd.DataFrame) -> pd.DataFrame:
        x = frame[self.columns].astype(np.float64)
        x["symbol"] = pd.Categorical(frame["symbol"], categories=self.symbols)
        return x

    def _tune(self, train: pd.DataFrame, early: pd.DataFrame, base: dict[str, Any]) -> dict[str, Any]:
        """Optuna search on the training window only; returns the best parameters found.

        The study is named after the data it saw (a fingerprint of the rows' times and
        symbols), the set-up it searched in (profile, fixed parameters, feature columns)
        and the seed: re-running the same fold reuses its finished trials, and a run with
        other settings starts a study of its own instead of reusing trials it did not run.
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        x_tr, y_tr = self._x(train), labels(train, self.name)
        x_va, y_va = self._x(early), labels(early, self.name)
        storage = None
        if self.config.study_dir is not None:
            self.config.study_dir.mkdir(parents=True, exist_ok=True)
            # the training flow's fit processes share this file: wait for its lock, not fail
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{self.config.study_dir / 'optuna.db'}",
                engine_kwargs={"connect_args": {"timeout": 120}},
            )
        setup = json.dumps(
            {"profile": self.config.profile, "fixed": base, "columns": self.columns},
            sort_keys=True,
            default=str,
        )
        setup_hash = hashlib.sha256(setup.encode()).hexdigest()[:8]
        study = optuna.create_study(
            study_name=f"{self.name}-{_fingerprint(train, early)}-{setup_hash}-seed{self.config.seed}",
            storage=storage,
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=self.config.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20),
        )
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

        def objective(trial: optuna.Trial) -> float:
            params = {**base, **self._space(trial)}
            self._train(params, x_tr, y_tr, x_va, y_va, trial)
            return binary_log_loss(y_va, self._raw(x_va))

        remaining = self.config.trials - len(study.trials)
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, show_progress_bar=self.config.progress)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            log.warning("%s: every Optuna trial was pruned; keeping the profile defaults", self.name)
            return {}
        best = min(done, key=lambda t: float(t.value if t.value is not None else np.inf))
        self.report["optuna"] = {
            "study": study.study_name,
            "trials": len(study.trials),
            "best_valid_log_loss": best.value,
        }
        return dict(best.params)

    @abstractmethod
    def _space(self, trial: Any) -> dict[str, Any]: ...

    @abstractmethod
    def _train(
        self,
        params: dict[str, Any],
        x: pd.DataFrame,
        y: np.ndarray,
        x_valid: pd.DataFrame,
        y_valid: np.ndarray,
        trial: Any = None,
    ) -> None: ...

    @abstractmethod
    def _raw(self, x: pd.DataFrame) -> np.ndarray: ...

    @abstractmethod
    def _importance(self) -> dict[str, float]: ...


class LGBMModel(BoostingModel):
    """LightGBM binary classifier (``lgbm``)."""

    name = "lgbm"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 300,
                 "feature_fraction": 0.5, "bagging_fraction": 0.7, "lambda_l2": 5.0,
                 "num_boost_round": 400, "early_stopping": 50},
        "full": {"learning_rate": 0.02, "num_leaves": 15, "min_child_samples": 500,
                 "feature_fraction": 0.5, "bagging_fraction": 0.7, "lambda_l2": 5.0,
                 "num_boost_round": 3000, "early_stopping": 150},
    }  # fmt: skip

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.booster: Any = None

    def _space(self, trial: Any) -> dict[str, Any]:
        return {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.1, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 7, 63, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 50, 2000, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 0.9),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
        }

    def _train(
        self,
        params: dict[str, Any],
        x: pd.DataFrame,
        y: np.ndarray,
        x_valid: pd.DataFrame,
        y_valid: np.ndarray,
        trial: Any = None,
    ) -> None:
        import lightgbm as lgb

        p, rounds, patience = _library_params(params)
        p.update(
            objective="binary",
            metric="binary_logloss",
            bagging_freq=1,
            seed=self.config.seed,
            deterministic=True,
            force_row_wise=True,
            num_threads=self.config.n_jobs,
            verbosity=-1,
        )
        train_set = lgb.Dataset(x, y, categorical_feature=["symbol"], free_raw_data=False)
        valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set)
        callbacks: list[Any] = [lgb.early_stopping(patience, verbose=False)]
        if trial is not None:
            from optuna_integration import LightGBMPruningCallback

            callbacks.append(LightGBMPruningCallback(trial, "binary_logloss", valid_name="valid"))
        self.booster = lgb.train(
            p, train_set, rounds, valid_sets=[valid_set], valid_names=["valid"], callbacks=callbacks
        )
        self.report["best_iteration"] = int(self.booster.best_iteration)

    def _raw(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_iteration=self.booster.best_iteration))

    def _importance(self) -> dict[str, float]:
        gain = self.booster.feature_importance(importance_type="gain")
        return dict(zip(self.booster.feature_name(), map(float, gain), strict=True))


class XGBModel(BoostingModel):
    """XGBoost binary classifier (``xgb``), histogram trees with a native symbol category."""

    name = "xgb"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"eta": 0.05, "max_depth": 4, "min_child_weight": 50.0, "subsample": 0.7,
                 "colsample_bytree": 0.5, "lambda": 5.0, "num_boost_round": 400, "early_stopping": 50},
        "full": {"eta": 0.02, "max_depth": 4, "min_child_weight": 100.0, "subsample": 0.7,
                 "colsample_bytree": 0.5, "lambda": 5.0, "num_boost_round": 3000, "early_stopping": 150},
    }  # fmt: skip

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.booster: Any = None

    def _space(self, trial: Any) -> dict[str, Any]:
        return {
            "eta": trial.suggest_float("eta", 0.01, 0.1, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 7),
            "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 500.0, log=True),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 0.9),
            "lambda": trial.suggest_float("lambda", 1e-3, 30.0, log=True),
        }

    def _train(
        self,
        params: dict[str, Any],
        x: pd.DataFrame,
        y: np.ndarray,
        x_valid: pd.DataFrame,
        y_valid: np.ndarray,
        trial: Any = None,
    ) -> None:
        import xgboost as xgb

        p, rounds, patience = _library_params(params)
        p.update(
            objective="binary:logistic",
            eval_metric="logloss",
            tree_method="hist",
            seed=self.config.seed,
            nthread=self.config.n_jobs,
            verbosity=0,
        )
        dtrain = xgb.DMatrix(x, y, enable_categorical=True)
        dvalid = xgb.DMatrix(x_valid, y_valid, enable_categorical=True)
        callbacks: list[Any] = []
        if trial is not None:
            from optuna_integration import XGBoostPruningCallback

            callbacks.append(XGBoostPruningCallback(trial, "valid-logloss"))
        self.booster = xgb.train(
            p,
            dtrain,
            rounds,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=patience,
            verbose_eval=False,
            callbacks=callbacks,
        )
        self.report["best_iteration"] = int(self.booster.best_iteration)

    def _raw(self, x: pd.DataFrame) -> np.ndarray:
        import xgboost as xgb

        dm = xgb.DMatrix(x, enable_categorical=True)
        return np.asarray(self.booster.predict(dm, iteration_range=(0, self.booster.best_iteration + 1)))

    def _importance(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.booster.get_score(importance_type="total_gain").items()}


def _library_params(params: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """The library's own parameters, the boosting round cap, and the early-stopping patience."""
    own = {k: v for k, v in params.items() if k not in ("calibrate", "num_boost_round", "early_stopping")}
    return own, int(params["num_boost_round"]), int(params["early_stopping"])


def _fingerprint(*frames: pd.DataFrame) -> str:
    """A short hash of which rows (symbols, times) the frames hold, and their labels."""
    h = hashlib.sha256()
    for f in frames:
        keys = [c for c in ("symbol", "open_time", "target_up") if c in f]
        h.update(pd.util.hash_pandas_object(f[keys], index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]
