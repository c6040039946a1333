"""Model families by name: one registry, one module per family.

``get_model("lgbm")`` returns an unfitted :class:`~tasks.models.base.ProbaModel`.
Families import their heavy libraries (torch, pytorch-forecasting) only when built.
"""

from __future__ import annotations

import importlib

from core.errors import BadConfigError
from tasks.models.base import ModelConfig, ProbaModel

#: name → "module:class" (imported on first use).
REGISTRY: dict[str, str] = {
    "xgb": "tasks.models.boosting:XGBModel",
    "lgbm": "tasks.models.boosting:LGBMModel",
    "tft": "tasks.models.sequence:TFTModel",
    "nhits": "tasks.models.sequence:NHiTSModel",
    "patchtst": "tasks.models.sequence:PatchTSTModel",
    "stacker": "tasks.models.stacker:StackerModel",
}
BASE_MODELS = ("xgb", "lgbm", "tft", "nhits", "patchtst")


def model_class(name: str) -> type[ProbaModel]:
    """The class registered under ``name``.

    Raises:
        BadConfigError: unknown name (the message lists the known ones).
    """
    if name not in REGISTRY:
        raise BadConfigError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    found: type[ProbaModel] = getattr(importlib.import_module(module), cls)
    return found


def get_model(name: str, config: ModelConfig | None = None) -> ProbaModel:
    """A new, unfitted model of family ``name``."""
    return model_class(name)(config)


def parse_models(spec: str | None, default: tuple[str, ...] = BASE_MODELS) -> list[str]:
    """Base model names from a comma list (``"xgb,lgbm"``), checked against the registry."""
    names = [n.strip() for n in spec.split(",") if n.strip()] if spec else list(default)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise BadConfigError(f"unknown model {unknown[0]!r}; known models: {', '.join(REGISTRY)}")
    if "stacker" in names:
        raise BadConfigError("'stacker' is not a base model; it is fitted on the base models' OOF P(up)")
    if not names:
        raise BadConfigError(f"no models chosen; known base models: {', '.join(BASE_MODELS)}")
    return names


__all__ = ["BASE_MODELS", "REGISTRY", "ModelConfig", "ProbaModel", "get_model", "model_class", "parse_models"]
