"""SR models behind a registry: ``create_model(name, scale)``, ``list_models()``, ``model_info(name)``.

Importing this package registers the built-in models (bicubic, espcn, fsrcnn, plain16/32/48).
"""

from srnas.models import bicubic, espcn, fsrcnn, plain  # noqa: F401  (registration side effects)
from srnas.models.complexity import conv_macs, count_params, gmacs
from srnas.models.registry import ModelInfo, check_scale, create_model, list_models, model_info, register_model

__all__ = [
    "ModelInfo",
    "check_scale",
    "conv_macs",
    "count_params",
    "create_model",
    "gmacs",
    "list_models",
    "model_info",
    "register_model",
]
