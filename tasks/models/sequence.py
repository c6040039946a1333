"""Sequence models (TFT, N-HiTS, PatchTST) through pytorch-forecasting, mapped to P(up).

Each regresses the next bar's log return with ``QuantileLoss`` from an encoder window
of the symbol's past rows (returns and features) and the features of the forecast row
itself (known at its close: ``time_varying_known_reals``). The encoder sees the target
of rows before t, i.e. returns that ended by t's close, so nothing after t leaks in
(this holds for the product's one-bar horizon).

P(up) comes from the forecast in one of two ways, both measured on the validation
window and the better-calibrated one kept (``report`` holds both), then Platt-scaled on
the validation window (the raw forecasts' scale is far from calibrated):

- ``quantile``: P(return > 0) interpolated from the predicted quantiles;
- ``logistic``: 1 / (1 + exp(-ŷ / s)), ŷ the median, s the training target's std
  (the seeds' "TFT logistic transform").
"""

from __future__ import annotations

import logging
import warnings
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from core.errors import BadConfigError, BadDataError
from tasks.models.base import (
    RETURN_TARGET,
    TARGET,
    ModelConfig,
    Platt,
    ProbaModel,
    binary_log_loss,
    clip_proba,
)

log = logging.getLogger(__name__)

#: Scale-free features the sequence models read (those present in the matrix are used).
SEQUENCE_FEATURES = (
    "log_ret_1", "log_ret_6", "log_ret_24", "log_ret_168", "realized_vol_24", "realized_vol_168",
    "rsi_14", "macd_hist_pct", "bb_position", "atr_pct", "volume_z_20", "adx_14", "vwap_dist_24",
    "hour_sin", "hour_cos", "btc_log_ret_1", "btc_log_ret_24", "btc_realized_vol_24",
)  # fmt: skip
QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
_COMMON: dict[str, dict[str, Any]] = {
    "fast": {"encoder_length": 24, "batch_size": 256, "max_epochs": 5, "train_batches": 30,
             "patience": 2, "learning_rate": 3e-3, "gradient_clip": 0.1},
    "full": {"encoder_length": 72, "batch_size": 256, "max_epochs": 30, "train_batches": 200,
             "patience": 5, "learning_rate": 1e-3, "gradient_clip": 0.1},
}  # fmt: skip


def quantile_p_up(quantiles: np.ndarray, levels: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """P(return > 0) per row from predicted quantiles (rows × levels), by interpolating the CDF.

    Quantiles are sorted first (the network does not guarantee monotonicity); beyond the
    outermost quantiles the probability is held at the outermost level.
    """
    q = np.sort(np.asarray(quantiles, dtype=np.float64), axis=1)
    lv = np.asarray(levels, dtype=np.float64)
    below = np.array([np.interp(0.0, row, lv, left=lv[0] / 2, right=1 - (1 - lv[-1]) / 2) for row in q])
    return clip_proba(1.0 - below)


def logistic_p_up(median: np.ndarray, scale: float) -> np.ndarray:
    """The logistic transform 1 / (1 + exp(-ŷ / s))."""
    return clip_proba(1.0 / (1.0 + np.exp(-np.asarray(median, dtype=np.float64) / scale)))


class SequenceModel(ProbaModel):
    """Shared plumbing: the dataset, seeded training with early stopping, the P(up) map.

    The model remembers the last ``context_rows`` rows of each symbol it was fitted on,
    so a frame that starts right after the fitting data can be predicted from its first
    row; otherwise a frame must bring its own history (rows before the ones that matter).
    """

    defaults: ClassVar[dict[str, dict[str, Any]]]

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config)
        self.settings = self.params({k: {**_COMMON[k], **self.defaults[k]} for k in _COMMON})
        self.context_rows = int(self.settings["encoder_length"])
        self.features: list[str] = []
        self.network: Any = None
        self.dataset_parameters: dict[str, Any] = {}
        self.tail = pd.DataFrame()
        self.target_std = 1.0
        self.step = pd.Timedelta(0)
        self.mapping = "quantile"
        self.calibrator = Platt()

    # -- the network of each family -------------------------------------------------
    @abstractmethod
    def build(self, dataset: Any, loss: Any) -> Any:
        """The untrained pytorch-forecasting network for ``dataset``."""

    # -- fitting ----------------------------------------------------------------------
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> Self:
        """Train on ``train``, stop early on ``valid``, choose the P(up) mapping there."""
        import lightning.pytorch as pl
        import torch
        from pytorch_forecasting import QuantileLoss, TimeSeriesDataSet

        y_valid = _check_labeled(valid, self.name)
        _check_labeled(train, self.name)
        pl.seed_everything(self.config.seed, workers=True, verbose=False)
        torch.set_num_threads(self.config.n_jobs)
        self.features = [c for c in SEQUENCE_FEATURES if c in train]
        self.step = _step(train)
        s = self.settings
        frame_train = self._pf_frame(train)
        data_train, _ = _indexed(frame_train, pd.DataFrame())
        dataset = TimeSeriesDataSet(data_train, **self._dataset_kwargs())
        self.dataset_parameters = dataset.get_parameters()
        frame_valid = self._pf_frame(valid)
        data_valid, wanted = _indexed(frame_valid, _tail(frame_train, self.context_rows))
        valid_ds = TimeSeriesDataSet.from_dataset(
            dataset, data_valid, stop_randomization=True, min_prediction_idx=int(wanted["bar"].min())
        )
        best = _BestWeights()
        with _quiet():
            network = self.build(dataset, QuantileLoss(quantiles=list(QUANTILES)))
            trainer = pl.Trainer(
                max_epochs=s["max_epochs"],
                accelerator=self._accelerator(),
                devices=1,
                gradient_clip_val=s["gradient_clip"],
                limit_train_batches=s["train_batches"],
                num_sanity_val_steps=0,
                callbacks=[pl.callbacks.EarlyStopping("val_loss", patience=s["patience"]), best],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=self.config.progress,
                enable_model_summary=False,
                deterministic=True,
            )
            trainer.fit(
                network,
                dataset.to_dataloader(train=True, batch_size=s["batch_size"], num_workers=0),
                valid_ds.to_dataloader(train=False, batch_size=1024, num_workers=0),
            )
        if best.state is not None:
            network.load_state_dict(best.state)
        network.trainer = None  # drop the trainer so the fitted model pickles
        self.network = network
        self.target_std = float(np.std(train[RETURN_TARGET].to_numpy(dtype=np.float64))) or 1.0
        seen = pd.concat([frame_train, frame_valid]).sort_values(["symbol", "open_time"])
        self.tail = _tail(seen, self.context_rows)
        q = self._quantiles(valid, context=_tail(frame_train, self.context_rows))
        by_quantile = binary_log_loss(y_valid, quantile_p_up(q))
        by_logistic = binary_log_loss(y_valid, logistic_p_up(q[:, QUANTILES.index(0.5)], self.target_std))
        self.mapping = "quantile" if by_quantile <= by_logistic else "logistic"
        raw = self._mapped(q)
        self.calibrator = Platt.fit(raw, y_valid, self.config.seed)
        self.report.update(
            valid_log_loss_calibrated=binary_log_loss(y_valid, self.calibrator(raw)),
            best_epoch=best.epoch,
            best_val_quantile_loss=best.value,
            valid_log_loss_quantile=by_quantile,
            valid_log_loss_logistic=by_logistic,
            valid_log_loss_mapped=min(by_quantile, by_logistic),
            mapping=self.mapping,
            target_std=self.target_std,
            train_rows=len(train),
            features=self.features,
        )
        return self

    def predict_proba(self, frame: pd.DataFrame, context: pd.DataFrame | None = None) -> pd.Series:
        """P(up) of every row: the mapping chosen in ``fit``, then its Platt calibration.

        History for the first rows comes from ``context`` (earlier rows) and the tail of
        the fitting data; a row with fewer than ``context_rows`` earlier rows is an error.
        """
        history = self._recent_tail(frame)
        if context is not None and not context.empty:
            history = pd.concat([history, self._pf_frame(context)])
            history = history.drop_duplicates(["symbol", "open_time"], keep="last")
        p = self.calibrator(self._mapped(self._quantiles(frame, history)))
        return pd.Series(p, index=frame.index, name=self.name)

    def _recent_tail(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The remembered tail of symbols whose rows in ``frame`` start soon after it.

        "Soon": within ``context_rows`` intervals, so a frame that follows the fitting data
        (even across a walk-forward embargo) is predicted from its first row, while a frame
        months later is not silently given stale history.
        """
        if self.tail.empty:
            return self.tail
        first = pd.to_datetime(frame.groupby("symbol")["open_time"].min(), utc=True)
        last = pd.to_datetime(self.tail.groupby("symbol")["open_time"].max(), utc=True)
        gap = first.reindex(last.index) - last
        near = gap[(gap > pd.Timedelta(0)) & (gap <= self.step * (self.context_rows + 1))].index
        return self.tail[self.tail["symbol"].isin(near)]

    def _mapped(self, q: np.ndarray) -> np.ndarray:
        if self.mapping == "quantile":
            return quantile_p_up(q)
        return logistic_p_up(q[:, QUANTILES.index(0.5)], self.target_std)

    def predict_quantiles(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The forecast quantiles of the next log return of each row (columns: levels)."""
        return pd.DataFrame(self._quantiles(frame), index=frame.index, columns=list(QUANTILES))

    # -- plumbing ---------------------------------------------------------------------
    def _quantiles(self, frame: pd.DataFrame, context: pd.DataFrame | None = None) -> np.ndarray:
        """Quantiles (rows of ``frame`` × levels) from the network, aligned with ``frame``.

        ``context``: earlier rows the encoder may read (default: the tail of the fit data).
        """
        if self.network is None:
            raise RuntimeError(f"{self.name}: predict before fit")
        dataset, wanted = self._dataset(frame, self.tail if context is None else context)
        out = self._predict(dataset, mode="quantiles", return_index=True)
        values = out.output.detach().cpu().numpy()[:, 0, :]
        index = out.index.assign(_row=np.arange(len(out.index)))
        found = wanted.merge(index, on=["symbol", "bar"], how="left")["_row"]
        if found.isna().any():
            first = frame.iloc[int(np.flatnonzero(found.isna().to_numpy())[0])]
            raise BadDataError(
                f"{self.name}: {int(found.isna().sum())} rows lack the {self.context_rows} earlier rows "
                f"the encoder needs (first: {first['symbol']} {first['open_time']}); "
                "pass a frame that starts earlier"
            )
        return np.asarray(values[found.to_numpy(dtype=np.int64)], dtype=np.float64)

    def _dataset(self, frame: pd.DataFrame, context: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
        """The prediction dataset of ``frame``'s rows (history from ``context``) and their keys."""
        from pytorch_forecasting import TimeSeriesDataSet

        data, wanted = _indexed(self._pf_frame(frame), context)
        start = int(wanted["bar"].min())
        dataset = TimeSeriesDataSet.from_parameters(
            self.dataset_parameters, data, stop_randomization=True, min_prediction_idx=start
        )
        return dataset, wanted

    def _predict(self, dataset: Any, **kwargs: Any) -> Any:
        """``network.predict`` on a dataset, quietly, on the configured device."""
        with _quiet():
            return self.network.predict(
                dataset.to_dataloader(train=False, batch_size=2048, num_workers=0),
                trainer_kwargs={
                    "accelerator": self._accelerator(),
                    "logger": False,
                    "enable_progress_bar": False,
                    "enable_model_summary": False,
                },
                **kwargs,
            )

    def _dataset_kwargs(self) -> dict[str, Any]:
        from pytorch_forecasting.data import EncoderNormalizer

        length = self.context_rows
        return {
            "time_idx": "bar",
            "target": RETURN_TARGET,
            "group_ids": ["symbol"],
            "max_encoder_length": length,
            "min_encoder_length": length,
            "max_prediction_length": 1,
            "min_prediction_length": 1,
            "time_varying_known_reals": self.features,
            "time_varying_unknown_reals": [RETURN_TARGET],
            "target_normalizer": EncoderNormalizer(method="standard", center=False),
            "allow_missing_timesteps": False,
            "add_relative_time_idx": False,
            "add_target_scales": False,
            "add_encoder_length": False,
        }

    def _pf_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The columns pytorch-forecasting reads (``_order`` keeps the frame's row order).

        Missing targets (live rows, the pyfunc's input) are filled in :func:`_indexed`.
        Missing features are carried forward within the symbol, then 0 (the training mean
        after scaling is close to it).
        """
        missing = [c for c in self.features if c not in frame]
        if missing:
            raise BadDataError(f"{self.name}: input lacks feature columns {missing[:5]}")
        out = frame[["symbol", "open_time", *self.features]].copy()
        out["symbol"] = out["symbol"].astype(str)
        target = frame[RETURN_TARGET] if RETURN_TARGET in frame else pd.Series(np.nan, index=frame.index)
        out[RETURN_TARGET] = target.astype(np.float64)
        out["_ret"] = frame["log_ret_1"].astype(np.float64) if "log_ret_1" in frame else np.nan
        out[self.features] = out.groupby("symbol")[self.features].ffill().fillna(0.0).astype(np.float32)
        out["_order"] = np.arange(len(out))
        return out

    def _accelerator(self) -> str:
        import torch

        device = self.config.device
        if device == "gpu" and not torch.cuda.is_available():
            raise BadConfigError("device=gpu but torch sees no CUDA GPU; use device=auto or cpu")
        return "gpu" if device == "gpu" or (device == "auto" and torch.cuda.is_available()) else "cpu"


class TFTModel(SequenceModel):
    """Temporal Fusion Transformer (``tft``)."""

    name = "tft"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"hidden_size": 16, "attention_head_size": 2, "hidden_continuous_size": 8, "dropout": 0.1},
        "full": {"hidden_size": 32, "attention_head_size": 4, "hidden_continuous_size": 16, "dropout": 0.2},
    }

    def build(self, dataset: Any, loss: Any) -> Any:
        """TemporalFusionTransformer sized by the profile."""
        from pytorch_forecasting import TemporalFusionTransformer

        s = self.settings
        return TemporalFusionTransformer.from_dataset(
            dataset,
            hidden_size=s["hidden_size"],
            attention_head_size=s["attention_head_size"],
            hidden_continuous_size=s["hidden_continuous_size"],
            dropout=s["dropout"],
            learning_rate=s["learning_rate"],
            loss=loss,
            log_interval=-1,
            reduce_on_plateau_patience=max(1, s["patience"] - 1),
        )

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> Self:
        """Fit, then record TFT's variable importance on the validation window (``report``)."""
        super().fit(train, valid)
        self.report["importance"] = self.variable_importance(valid)
        return self

    def variable_importance(self, frame: pd.DataFrame) -> dict[str, float]:
        """Variable-selection weights summed over ``frame``'s rows, each side summing to 1.

        Keys are ``encoder:<name>`` (the history window) and ``decoder:<name>`` (the
        forecast row's known features).
        """
        dataset, _ = self._dataset(frame, self._recent_tail(frame))
        raw = self._predict(dataset, mode="raw")
        interpretation = self.network.interpret_output(getattr(raw, "output", raw), reduction="sum")
        out: dict[str, float] = {}
        for side in ("encoder", "decoder"):
            weights = interpretation[f"{side}_variables"].detach().cpu().numpy().astype(np.float64)
            total = float(weights.sum()) or 1.0
            names = getattr(self.network, f"{side}_variables")
            out.update({f"{side}:{n}": float(w) / total for n, w in zip(names, weights, strict=True)})
        return out


class NHiTSModel(SequenceModel):
    """N-HiTS (``nhits``): hierarchical interpolation MLP stacks, with covariates."""

    name = "nhits"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"hidden_size": 64, "dropout": 0.1},
        "full": {"hidden_size": 256, "dropout": 0.1},
    }

    def build(self, dataset: Any, loss: Any) -> Any:
        """NHiTS sized by the profile (one-step forecasts: no down-sampling of the output)."""
        from pytorch_forecasting import NHiTS

        s = self.settings
        return NHiTS.from_dataset(
            dataset,
            hidden_size=s["hidden_size"],
            dropout=s["dropout"],
            n_blocks=[1, 1, 1],
            pooling_sizes=[4, 2, 1],
            downsample_frequencies=[1, 1, 1],
            learning_rate=s["learning_rate"],
            loss=loss,
            log_interval=-1,
            reduce_on_plateau_patience=max(1, s["patience"] - 1),
        )


class PatchTSTModel(SequenceModel):
    """PatchTST (``patchtst``), see :mod:`tasks.models.patchtst`."""

    name = "patchtst"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"patch_len": 8, "stride": 4, "d_model": 32, "n_heads": 4, "n_layers": 1, "d_ff": 64,
                 "dropout": 0.1},
        "full": {"patch_len": 12, "stride": 6, "d_model": 64, "n_heads": 4, "n_layers": 3, "d_ff": 128,
                 "dropout": 0.2},
    }  # fmt: skip

    def build(self, dataset: Any, loss: Any) -> Any:
        """The project's PatchTST network sized by the profile."""
        from tasks.models.patchtst import PatchTST

        s = self.settings
        keys = ("patch_len", "stride", "d_model", "n_heads", "n_layers", "d_ff", "dropout")
        return PatchTST.from_dataset(
            dataset,
            loss=loss,
            learning_rate=s["learning_rate"],
            log_interval=-1,
            reduce_on_plateau_patience=max(1, s["patience"] - 1),
            **{k: s[k] for k in keys},
        )


class _BestWeights:
    """Lightning callback keeping the weights of the epoch with the lowest ``val_loss``."""

    def __new__(cls) -> Any:
        import lightning.pytorch as pl

        class BestWeights(pl.Callback):
            def __init__(self) -> None:
                self.value = float("inf")
                self.epoch = -1
                self.state: dict[str, Any] | None = None

            def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
                loss = trainer.callback_metrics.get("val_loss")
                if loss is not None and float(loss) < self.value:
                    self.value, self.epoch = float(loss), int(trainer.current_epoch)
                    self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

        return BestWeights()


def _tail(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The last ``rows`` rows of each symbol."""
    return frame.groupby("symbol", sort=False).tail(rows).reset_index(drop=True)


def _indexed(frame: pd.DataFrame, context: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` preceded by the context rows of its symbols that come before it, numbered.

    ``bar`` counts each symbol's rows in time order (rows, not hours: the encoder, like
    the features, reads the previous rows across exchange maintenance gaps). Returns the
    data and the (symbol, bar) keys of ``frame``'s rows in ``frame``'s order.
    """
    parts = [frame.assign(_wanted=True)]
    if not context.empty:
        first = frame.groupby("symbol")["open_time"].min()
        ctx = context[context["symbol"].isin(first.index)]
        ctx = ctx[ctx["open_time"].to_numpy() < first.reindex(ctx["symbol"]).to_numpy()]
        parts.insert(0, ctx.assign(_wanted=False))
    data = pd.concat(parts).sort_values(["symbol", "open_time"], kind="stable").reset_index(drop=True)
    data["bar"] = data.groupby("symbol").cumcount().astype(np.int64)
    # A missing target (live rows, the pyfunc's input: no targets) is the next row's
    # log_ret_1, the same number, known once that row closed. The newest row's stays
    # unknown and is set to 0: it is only the forecast row's own target, never an input.
    following = data.groupby("symbol")["_ret"].shift(-1)
    data[RETURN_TARGET] = data[RETURN_TARGET].fillna(following).fillna(0.0)
    wanted = data.loc[data["_wanted"].astype(bool), ["symbol", "bar", "_order"]].sort_values("_order")
    return data.drop(columns=["_wanted", "_order", "_ret"]), wanted[["symbol", "bar"]].reset_index(drop=True)


def _step(frame: pd.DataFrame) -> pd.Timedelta:
    """The candle interval: the most common gap between a symbol's consecutive rows."""
    ordered = frame.sort_values(["symbol", "open_time"])
    times = pd.to_datetime(ordered["open_time"], utc=True)
    diffs: Any = times.groupby(ordered["symbol"].to_numpy()).diff()
    positive = diffs[diffs.dt.total_seconds() > 0]
    if positive.empty:
        raise BadDataError("sequence models need two or more rows of a symbol to learn the interval")
    return pd.Timedelta(positive.mode().iloc[0])


def _check_labeled(frame: pd.DataFrame, who: str) -> np.ndarray:
    for col in (TARGET, RETURN_TARGET):
        if col not in frame or frame[col].isna().any():
            raise BadDataError(f"{who}: every training row needs {col!r}")
    return frame[TARGET].to_numpy(dtype=np.int64)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's and pytorch-forecasting's chatter (GPU notices, tips) while training."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", module="pytorch_forecasting")
        warnings.filterwarnings("ignore", category=UserWarning)
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
