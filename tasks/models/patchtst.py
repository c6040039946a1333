"""PatchTST (Nie et al., ICLR 2023, "A Time Series is Worth 64 Words") for pytorch-forecasting.

pytorch-forecasting 1.8.0 has no PatchTST, so it is written here as a ``BaseModel``: it
shares ``TimeSeriesDataSet``, its scalers and target normaliser, and ``QuantileLoss``.

As in the paper, every encoder channel (the target and each covariate) is cut into
overlapping patches (the series padded at the end by one stride), each patch linearly
embedded with a learned positional embedding, and all channels pass *independently*
through one shared Transformer encoder. The paper's per-channel head forecasts each
channel from itself; here the head reads every channel's patch representations, plus
the decoder row's known covariates (the features at the forecast time), because the
target alone (crypto returns) carries almost nothing to forecast from. Instance
normalisation (RevIN) is the dataset's job here: reals are standardised with
training-window statistics and the target by its encoder window (``EncoderNormalizer``).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_forecasting import BaseModel, TimeSeriesDataSet
from torch import nn


class PatchTST(BaseModel):  # type: ignore[misc]
    """Patching + channel-independent Transformer encoder + linear head."""

    def __init__(
        self,
        context_length: int,
        prediction_length: int,
        n_channels: int,
        known_positions: list[int],
        n_outputs: int,
        patch_len: int = 8,
        stride: int = 4,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 64,
        dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        """Build the network (use :meth:`from_dataset`, which fills the shapes)."""
        self.save_hyperparameters(ignore=["loss", "logging_metrics"])
        super().__init__(**kwargs)
        if patch_len > context_length:
            raise ValueError(f"patch_len {patch_len} is longer than the context {context_length}")
        self.n_patches = (context_length + stride - patch_len) // stride + 1
        self.embed = nn.Linear(patch_len, d_model)
        self.position = nn.Parameter(torch.randn(1, self.n_patches, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.known = nn.Linear(len(known_positions), d_model) if known_positions else None
        head_in = n_channels * self.n_patches * d_model + (d_model if known_positions else 0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_in, prediction_length * n_outputs))

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Quantile forecasts of the decoder steps from the encoder window."""
        hp = self.hparams
        enc = x["encoder_cont"]  # (batch, time, channels), all past values
        batch, length, channels = enc.shape
        series = enc.permute(0, 2, 1).reshape(batch * channels, 1, length)
        series = nn.functional.pad(series, (0, hp.stride), mode="replicate").squeeze(1)
        patches = series.unfold(-1, hp.patch_len, hp.stride)  # (batch*channels, patches, patch_len)
        hidden = self.encoder(self.embed(patches) + self.position)
        parts = [hidden.reshape(batch, channels * self.n_patches * hp.d_model)]
        if self.known is not None:
            parts.append(self.known(x["decoder_cont"][:, -1, hp.known_positions]))
        out = self.head(torch.cat(parts, dim=1)).view(batch, hp.prediction_length, hp.n_outputs)
        prediction = self.transform_output(out, target_scale=x["target_scale"])
        return self.to_network_output(prediction=prediction)

    @classmethod
    def from_dataset(cls, dataset: TimeSeriesDataSet, **kwargs: Any) -> PatchTST:
        """A network shaped for ``dataset`` (fixed encoder and prediction lengths)."""
        if dataset.min_encoder_length != dataset.max_encoder_length:
            raise ValueError("PatchTST needs a fixed encoder length")
        reals = list(dataset.reals)
        loss = kwargs.get("loss")
        quantiles = getattr(loss, "quantiles", None)
        new_kwargs = {
            "context_length": dataset.max_encoder_length,
            "prediction_length": dataset.max_prediction_length,
            "n_channels": len(reals),
            "known_positions": [reals.index(n) for n in dataset.time_varying_known_reals],
            "n_outputs": len(quantiles) if quantiles else 1,
            **kwargs,
        }
        model: PatchTST = super().from_dataset(dataset, **new_kwargs)
        return model
