"""Features: equal to an independent reference, causal, and identical from a live window."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.candles import to_store_frame
from core.errors import BadDataError
from tasks.features import FeatureGroup, FeatureSpec, feature_matrix, scale_free_columns, symbol_features
from tasks.features.causality import causality_violations
from tasks.features.regime import Regime
from tasks.features.sentiment import sentiment_for
from tasks.ingest.files import read_candle_file
from tasks.ingest.sample import SAMPLE_DIR
from tests import reference_indicators as ref

HOUR = 3_600_000
WARM_UP = 1000  # rows skipped before comparing recursive indicators with the reference


@pytest.fixture(scope="module")
def candles() -> dict[str, pd.DataFrame]:
    """Real BTC and ETH 1h candles from the bundled sample, in store layout."""
    return {s: to_store_frame(read_candle_file(SAMPLE_DIR / f"{s}-1h.zip")) for s in ("BTCUSDT", "ETHUSDT")}


@pytest.fixture(scope="module")
def btc_features(candles: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return symbol_features(candles["BTCUSDT"])


def _assert_close(ours: np.ndarray, reference: np.ndarray, skip: int) -> None:
    np.testing.assert_allclose(ours[skip:], reference[skip:], rtol=1e-8, atol=0)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("ema_10", lambda c: ref.ema(c.close.to_numpy(), 10)),
        ("ema_50", lambda c: ref.ema(c.close.to_numpy(), 50)),
        ("rsi_14", lambda c: ref.rsi(c.close.to_numpy(), 14)),
        ("macd", lambda c: ref.macd(c.close.to_numpy())[0]),
        ("macd_signal", lambda c: ref.macd(c.close.to_numpy())[1]),
        ("bb_upper", lambda c: ref.bbands(c.close.to_numpy())[0]),
        ("bb_middle", lambda c: ref.bbands(c.close.to_numpy())[1]),
        ("bb_lower", lambda c: ref.bbands(c.close.to_numpy())[2]),
        ("atr_14", lambda c: ref.atr(c.high.to_numpy(), c.low.to_numpy(), c.close.to_numpy())),
        ("adx_14", lambda c: ref.adx(c.high.to_numpy(), c.low.to_numpy(), c.close.to_numpy())[0]),
        ("plus_di_14", lambda c: ref.adx(c.high.to_numpy(), c.low.to_numpy(), c.close.to_numpy())[1]),
        ("minus_di_14", lambda c: ref.adx(c.high.to_numpy(), c.low.to_numpy(), c.close.to_numpy())[2]),
    ],
)
def test_indicators_match_an_independent_reference(
    name: str, reference, candles: dict[str, pd.DataFrame], btc_features: pd.DataFrame
) -> None:
    _assert_close(btc_features[name].to_numpy(), reference(candles["BTCUSDT"]), WARM_UP)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_features_at_t_ignore_every_candle_after_t(
    candles: dict[str, pd.DataFrame], data: st.DataObject
) -> None:
    btc = candles["BTCUSDT"]
    cut = data.draw(st.integers(min_value=FeatureSpec().min_history, max_value=len(btc)), label="cut")
    assert causality_violations(symbol_features, btc, [cut], rtol=0.0) == {}


def test_the_newest_min_history_candles_give_the_training_values(candles: dict[str, pd.DataFrame]) -> None:
    spec = FeatureSpec()
    btc = candles["BTCUSDT"]
    cuts = [spec.min_history + 1, 3000, 7777, len(btc)]
    assert causality_violations(symbol_features, btc, cuts, window=spec.min_history, rtol=1e-9) == {}
    # ...and the requirement is real: far fewer candles do not suffice
    assert causality_violations(symbol_features, btc, cuts[1:], window=150, rtol=1e-9)


def test_lags_count_time_across_a_maintenance_gap(candles: dict[str, pd.DataFrame]) -> None:
    btc = candles["BTCUSDT"].iloc[:3000]
    gappy = btc.drop(btc.index[2000:2005])  # a five-hour outage, like Binance's maintenance
    feats = symbol_features(gappy, step_ms=HOUR)
    assert feats.index.equals(gappy.index)  # no made-up rows come out
    after, close = btc.index[2005], btc["close"]
    # 24 bars back is 24 hours back, not 24 rows back
    assert feats.loc[after, "log_ret_24"] == pytest.approx(np.log(close.iloc[2005] / close.iloc[1981]))
    # one bar back across the gap is the last known close, and the models are told
    assert feats.loc[after, "log_ret_1"] == pytest.approx(np.log(close.iloc[2005] / close.iloc[1999]))
    assert feats.loc[after, "gap_bars_24"] == 5
    assert feats["gap_bars_24"].iloc[1000:2000].eq(0).all()
    assert feats.loc[btc.index[2005 + 24], "gap_bars_24"] == 0  # the flag fades after a day
    # rows around the gap still see only the past, also from the live flow's window
    cuts = [2001, 2003, 2030, len(gappy)]
    assert causality_violations(symbol_features, gappy, cuts, rtol=0.0) == {}
    window = FeatureSpec().min_history
    assert causality_violations(symbol_features, gappy, cuts, window=window, rtol=1e-9) == {}


def test_a_candle_off_the_time_grid_is_named(candles: dict[str, pd.DataFrame]) -> None:
    btc = candles["BTCUSDT"].iloc[:1500].copy()
    shifted = btc.index[1200] + pd.Timedelta(minutes=30)
    btc.index = btc.index.where(btc.index != btc.index[1200], shifted)
    expected = f"BTCUSDT: candle at {shifted} is off the grid of 60-minute bars"
    with pytest.raises(BadDataError, match=re.escape(expected)):
        feature_matrix({"BTCUSDT": btc}, HOUR)


def test_a_leaky_feature_is_caught(candles: dict[str, pd.DataFrame]) -> None:
    def peek_next_close(c):  # type: ignore[no-untyped-def]
        return {"next_return": pd.Series(c.close).shift(-1).to_numpy() / c.close - 1}

    leaky = FeatureSpec(extra=(FeatureGroup("leaky", peek_next_close, 2),))
    found = causality_violations(lambda f: symbol_features(f, leaky), candles["BTCUSDT"], [2000, 5000])
    assert list(found) == ["next_return"]


def test_targets_are_the_next_bar_by_time_and_unknown_ones_are_dropped(
    candles: dict[str, pd.DataFrame],
) -> None:
    btc = candles["BTCUSDT"].iloc[:3000]
    gappy = btc.drop(btc.index[2000])  # a missing candle: the bar before it has no next bar
    matrix = feature_matrix({"BTCUSDT": gappy}, HOUR, FeatureSpec(cross_asset_symbol=None))
    by_time = matrix.set_index("open_time")
    t = btc.index[1500]
    expected = np.log(btc["close"].iloc[1501] / btc["close"].iloc[1500])
    assert by_time.loc[t, "target_log_return"] == pytest.approx(expected, rel=1e-15)
    assert by_time.loc[t, "target_up"] == float(expected > 0)
    assert btc.index[1999] not in by_time.index and btc.index[-1] not in by_time.index
    live = feature_matrix(
        {"BTCUSDT": gappy}, HOUR, FeatureSpec(cross_asset_symbol=None), include_unlabeled=True
    )
    assert live["open_time"].iloc[-1] == btc.index[-1] and np.isnan(live["target_up"].iloc[-1])
    assert len(live) == len(matrix) + 2


def test_every_symbol_gets_btc_features_at_the_same_open_time(candles: dict[str, pd.DataFrame]) -> None:
    matrix = feature_matrix(candles, HOUR).set_index(["symbol", "open_time"])
    eth, btc = matrix.loc["ETHUSDT"], matrix.loc["BTCUSDT"]
    common = eth.index.intersection(btc.index)
    np.testing.assert_array_equal(eth.loc[common, "btc_log_ret_1"], btc.loc[common, "log_ret_1"])
    with pytest.raises(BadDataError, match="cross-asset features need BTCUSDT"):
        feature_matrix({"ETHUSDT": candles["ETHUSDT"]}, HOUR)


def test_too_little_history_names_the_symbol_and_range(candles: dict[str, pd.DataFrame]) -> None:
    short = candles["ETHUSDT"].iloc[:300]
    with pytest.raises(BadDataError, match=r"ETHUSDT: 300 candles \(2024-03-15.*need at least 844"):
        feature_matrix({"ETHUSDT": short}, HOUR, FeatureSpec(cross_asset_symbol=None))


def test_regimes_cover_all_four_states_and_are_one_hot(btc_features: pd.DataFrame) -> None:
    regime = btc_features["regime"].iloc[FeatureSpec().min_history :]
    assert set(regime.unique()) == {float(r) for r in Regime}
    flags = btc_features[[f"regime_{r.name.lower()}" for r in Regime]].iloc[FeatureSpec().min_history :]
    assert (flags.sum(axis=1) == 1).all()


def test_scale_free_features_do_not_change_with_the_price_level(candles: dict[str, pd.DataFrame]) -> None:
    btc = candles["BTCUSDT"].iloc[:3000]
    rescaled = btc.copy()
    rescaled[["open", "high", "low", "close"]] *= 1000.0
    spec = FeatureSpec(cross_asset_symbol=None)
    a = feature_matrix({"X": btc}, HOUR, spec)
    b = feature_matrix({"X": rescaled}, HOUR, spec)
    cols = scale_free_columns(a)
    assert "close" not in cols and "ema_10_dist" in cols
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-7, atol=1e-10)


def test_sentiment_uses_only_scores_published_by_the_candle_close() -> None:
    opens = pd.date_range("2025-01-01", periods=4, freq="h", tz="UTC").as_unit("ms")
    scores = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(
                ["2025-01-01 00:30", "2025-01-01 01:59:59.999", "2025-01-01 02:00"],
                utc=True,
                format="ISO8601",
            ),
            "score": [0.1, 0.2, 0.3],
            "symbol": [None, "BTCUSDT", "ETHUSDT"],
        }
    )
    seen = sentiment_for(scores, "BTCUSDT", opens, HOUR)
    assert seen.tolist() == [0.1, 0.2, 0.2, 0.2]  # ETH's score is not BTC's; none from the future


def test_fitted_statistics_come_from_the_training_window_only(candles: dict[str, pd.DataFrame]) -> None:
    from tasks.features.scaling import Standardizer, split_learn_infer

    matrix = feature_matrix({"BTCUSDT": candles["BTCUSDT"]}, HOUR, FeatureSpec(cross_asset_symbol=None))
    until = matrix["open_time"].iloc[len(matrix) // 2]
    learn, infer = split_learn_infer(matrix, until)
    cols = ["rsi_14", "atr_pct", "log_ret_1"]
    scaler = Standardizer.fit(learn, cols)
    assert scaler.fitted_until == until and infer["open_time"].min() > until

    shocked = infer.copy()
    shocked[cols] *= 100.0  # whatever happens after `until` ...
    again = Standardizer.fit(split_learn_infer(pd.concat([learn, shocked]), until)[0], cols)
    pd.testing.assert_series_equal(again.mean, scaler.mean)  # ... cannot move what was learned
    scaled = scaler.transform(learn)
    np.testing.assert_allclose(scaled[cols].mean().to_numpy(), 0.0, atol=1e-9)
    np.testing.assert_allclose(scaled[cols].std(ddof=0).to_numpy(), 1.0, rtol=1e-9)


def test_nan_heavy_features_name_the_symbol_and_range(candles: dict[str, pd.DataFrame]) -> None:
    dead = candles["ETHUSDT"].copy()
    dead.iloc[2000:4000, dead.columns.get_loc("volume")] = 0.0  # a long stretch without trading
    with pytest.raises(BadDataError, match=r"ETHUSDT 2024-04-19.*NaN-heavy features \(obv_flow_20 20%"):
        feature_matrix({"ETHUSDT": dead}, HOUR, FeatureSpec(cross_asset_symbol=None))


def test_sentiment_in_epoch_seconds_is_rejected_not_misread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tasks.features.sentiment import load_sentiment

    path = tmp_path / "scores.csv"
    path.write_text("timestamp,score\n1704067200,0.1\n1704070800,0.9\n")  # seconds, not ms
    with pytest.raises(BadDataError, match=r"implausible timestamp .* line\(s\) 2, 3"):
        load_sentiment(path)
    path.write_text("timestamp,score\n1704067200000,0.1\n2024-01-01T01:00:00Z,0.9\n")
    assert load_sentiment(path)["score"].tolist() == [0.1, 0.9]
