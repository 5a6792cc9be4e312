"""Unlearning methods behind one registry.

Every method takes the provider's :class:`TrainingState` (what produced theta) and a
:class:`ForgetRequest`, and returns theta_u. Add one by subclassing :class:`UnlearningMethod`
and decorating it with ``@UNLEARNING.register("name")`` in a new module of this package (each
module is imported here); see docs/components.md.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.unlearning.base import (
    UNLEARNING,
    ForgetConfig,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
    fit_standard,
    make_requests,
)
from tasks.unlearning.sisa import SisaEnsemble

# One method (or a few close variants) per module: every module here registers its methods on
# import, so adding a method is adding a file.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "UNLEARNING",
    "ForgetConfig",
    "ForgetRequest",
    "SisaEnsemble",
    "TrainingState",
    "UnlearningMethod",
    "copy_model",
    "fit_standard",
    "make_requests",
]
