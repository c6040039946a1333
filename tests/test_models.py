"""Model families: the registry contract, P(up) mappings, PatchTST, Optuna, sequence history."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import BadConfigError, BadDataError
from tasks.models import BASE_MODELS, REGISTRY, ModelConfig, get_model, parse_models
from tasks.models.sequence import QUANTILES, logistic_p_up, quantile_p_up

#: Neural nets small enough for a 2-core test run (the contract, not the skill, is tested).
TINY = {
    name: {"encoder_length": 12, "batch_size": 64, "max_epochs": 2, "train_batches": 6, "patience": 1}
    for name in ("tft", "nhits", "patchtst")
}
TINY["tft"].update(hidden_size=8, attention_head_size=1, hidden_continuous_size=4)
TINY["nhits"].update(hidden_size=16)
TINY["patchtst"].update(patch_len=4, stride=2, d_model=16, n_heads=2, n_layers=1, d_ff=16)


def tiny_config(seed: int = 7, **kw: object) -> ModelConfig:
    """A fast, seeded config with tiny neural nets."""
    return ModelConfig(seed=seed, device="cpu", params=TINY, **kw)  # type: ignore[arg-type]


def windows(
    matrix: pd.DataFrame, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
) -> tuple[pd.DataFrame, ...]:
    """Consecutive train / valid / test windows of a few symbols of real candles."""
    m = matrix[matrix["symbol"].isin(symbols)]
    t = m["open_time"]
    start = pd.Timestamp("2025-01-01", tz="UTC")
    train = m[(t >= start - pd.Timedelta(days=60)) & (t < start)]
    valid = m[(t >= start) & (t < start + pd.Timedelta(days=12))]
    test = m[(t >= start + pd.Timedelta(days=12)) & (t < start + pd.Timedelta(days=20))]
    return train, valid, test


def stacker_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Stacker input from real rows: two crude P(up)s derived from real features."""
    return pd.DataFrame(
        {
            "p_momentum": 1 / (1 + np.exp(-frame["log_ret_24"].to_numpy() * 20)),
            "p_rsi": 1 / (1 + np.exp((frame["rsi_14"].to_numpy() - 50) / 20)),
            "target_up": frame["target_up"].to_numpy(),
        },
        index=frame.index,
    )


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_model_keeps_the_contract(name: str, sample_matrix: pd.DataFrame) -> None:
    train, valid, test = windows(sample_matrix)
    if name == "stacker":
        train, valid, test = stacker_frame(train), stacker_frame(valid), stacker_frame(test)
    test = test.sample(frac=1.0, random_state=1)  # any row order; the index carries alignment

    first = get_model(name, tiny_config()).fit(train, valid).predict_proba(test)
    again = get_model(name, tiny_config()).fit(train, valid).predict_proba(test)

    assert isinstance(first, pd.Series)
    assert first.index.equals(test.index)
    assert first.notna().all()
    assert ((first > 0) & (first < 1)).all()
    assert first.std() > 0  # not a constant
    np.testing.assert_array_equal(first.to_numpy(), again.to_numpy())  # deterministic given the seed


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(BadConfigError, match="known models: xgb, lgbm, tft, nhits, patchtst, stacker"):
        get_model("prophet")
    with pytest.raises(BadConfigError, match="unknown model 'rf'"):
        parse_models("xgb,rf")
    with pytest.raises(BadConfigError, match="not a base model"):
        parse_models("xgb,stacker")
    assert parse_models(None) == list(BASE_MODELS)


def test_training_rows_without_labels_are_refused(sample_matrix: pd.DataFrame) -> None:
    train, valid, _ = windows(sample_matrix)
    broken = train.copy()
    broken.loc[broken.index[5], "target_up"] = np.nan
    with pytest.raises(BadDataError, match="1 training rows have no target_up"):
        get_model("lgbm").fit(broken, valid)


def test_quantile_mapping_interpolates_the_cdf_at_zero() -> None:
    symmetric = np.array([[-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]])
    assert quantile_p_up(symmetric)[0] == pytest.approx(0.5)
    shifted = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]])  # 0 halfway between q25 and q50
    assert quantile_p_up(shifted)[0] == pytest.approx(1 - (0.25 + 0.5) / 2)
    all_up = np.array([[1.0, 2, 3, 4, 5, 6, 7]])
    assert quantile_p_up(all_up)[0] == pytest.approx(1 - QUANTILES[0] / 2)
    unsorted = symmetric[:, ::-1]  # crossing quantiles are sorted first
    assert quantile_p_up(unsorted)[0] == pytest.approx(0.5)


def test_logistic_mapping_is_the_seeds_transform() -> None:
    assert logistic_p_up(np.array([0.0]), 0.01)[0] == pytest.approx(0.5)
    assert logistic_p_up(np.array([0.01]), 0.01)[0] == pytest.approx(1 / (1 + np.exp(-1)))


def test_sequence_models_report_both_mappings_and_need_history(sample_matrix: pd.DataFrame) -> None:
    train, valid, _ = windows(sample_matrix)
    model = get_model("nhits", tiny_config()).fit(train, valid)
    for key in ("valid_log_loss_quantile", "valid_log_loss_logistic", "mapping", "valid_log_loss_calibrated"):
        assert key in model.report
    assert model.report["mapping"] in ("quantile", "logistic")
    # Rows right after the fit data use the remembered tail; a frame far later must bring history.
    later = sample_matrix[
        (sample_matrix["symbol"] == "BTCUSDT") & (sample_matrix["open_time"] >= "2025-04-01")
    ].head(30)
    with pytest.raises(BadDataError, match=r"lack the 12 earlier rows .* BTCUSDT 2025-04-01"):
        model.predict_proba(later)
    history = sample_matrix[
        (sample_matrix["symbol"] == "BTCUSDT")
        & (sample_matrix["open_time"] < "2025-04-01")
        & (sample_matrix["open_time"] >= "2025-03-25")
    ]
    with_context = model.predict_proba(later, context=history)
    longer = sample_matrix[
        (sample_matrix["symbol"] == "BTCUSDT")
        & (sample_matrix["open_time"] < "2025-04-01")
        & (sample_matrix["open_time"] >= "2025-03-01")
    ]
    # Live rows carry no targets: the history's returns come from the next row's log_ret_1.
    targets = ["target_log_return", "target_up"]
    unlabeled = model.predict_proba(later.drop(columns=targets), context=history.drop(columns=targets))
    np.testing.assert_allclose(with_context.to_numpy(), unlabeled.to_numpy(), rtol=1e-6)
    # The encoder reads exactly the 12 rows before each row: more history changes nothing.
    np.testing.assert_allclose(
        with_context.to_numpy(), model.predict_proba(later, context=longer).to_numpy(), rtol=1e-6
    )


def test_patchtst_is_a_pytorch_forecasting_base_model(sample_matrix: pd.DataFrame) -> None:
    from pytorch_forecasting import BaseModel

    train, valid, _ = windows(sample_matrix)
    model = get_model("patchtst", tiny_config()).fit(train, valid)
    net = model.network  # type: ignore[attr-defined]
    assert isinstance(net, BaseModel)
    # context 12, patch 4, stride 2, padded by one stride: (12 + 2 - 4) / 2 + 1 patches
    assert net.n_patches == 6
    assert net.hparams.n_outputs == len(QUANTILES)


def test_optuna_tunes_inside_the_training_window_and_persists_the_study(
    sample_matrix: pd.DataFrame, tmp_path: Path
) -> None:
    import optuna

    train, valid, _ = windows(sample_matrix)
    config = ModelConfig(
        seed=3, trials=4, study_dir=tmp_path / "optuna", params={"lgbm": {"num_boost_round": 60}}
    )
    model = get_model("lgbm", config).fit(train, valid)
    assert model.report["optuna"]["trials"] == 4
    storage = f"sqlite:///{tmp_path / 'optuna' / 'optuna.db'}"
    [summary] = optuna.get_all_study_summaries(storage)
    assert summary.study_name == model.report["optuna"]["study"]
    assert summary.n_trials == 4
    # The same fold again reuses the finished trials instead of searching again.
    again = get_model("lgbm", config).fit(train, valid)
    assert optuna.load_study(study_name=summary.study_name, storage=storage).trials.__len__() == 4
    assert again.report["params"] == model.report["params"]
    # Other fixed parameters on the same fold: a study of its own, never the trials above.
    other = replace(config, params={"lgbm": {"num_boost_round": 40}})
    changed = get_model("lgbm", other).fit(train, valid)
    assert changed.report["optuna"]["study"] != summary.study_name
    assert changed.report["optuna"]["trials"] == 4 and len(optuna.get_all_study_summaries(storage)) == 2


def test_tft_reports_its_variable_importance(sample_matrix: pd.DataFrame) -> None:
    train, valid, _ = windows(sample_matrix)
    model = get_model("tft", tiny_config()).fit(train, valid)
    importance = model.report["importance"]
    encoder = {k: v for k, v in importance.items() if k.startswith("encoder:")}
    decoder = {k: v for k, v in importance.items() if k.startswith("decoder:")}
    assert "encoder:target_log_return" in encoder and "decoder:rsi_14" in decoder
    assert sum(encoder.values()) == pytest.approx(1.0) and sum(decoder.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in importance.values())
