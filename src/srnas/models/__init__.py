"""SR models behind a registry: ``create_model(name, scale)``, ``list_models()``, ``model_info(name)``.

Importing this package registers the built-in models (bicubic, espcn, fsrcnn, plain16/32/48) and the width x depth
families ``plain_m<M>c<C>`` and ``ecbsr_m<M>c<C>`` (``list_families()``, ``family_info(prefix)``).
"""

from srnas.models import bicubic, ecbsr, espcn, fsrcnn, plain  # noqa: F401  (registration side effects)
from srnas.models.complexity import conv_macs, count_params, gmacs
from srnas.models.registry import (
    Deployable,
    FamilyInfo,
    ModelInfo,
    check_scale,
    create_model,
    deployed_form,
    family_info,
    is_known_model,
    list_families,
    list_models,
    model_info,
    register_family,
    register_model,
)

__all__ = [
    "Deployable",
    "FamilyInfo",
    "ModelInfo",
    "check_scale",
    "conv_macs",
    "count_params",
    "create_model",
    "deployed_form",
    "family_info",
    "gmacs",
    "is_known_model",
    "list_families",
    "list_models",
    "model_info",
    "register_family",
    "register_model",
]
