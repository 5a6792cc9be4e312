"""Unlearning methods behind one registry.

Every method takes the provider's :class:`TrainingState` (what produced theta) and a
:class:`ForgetRequest`, and returns theta_u. Add one by subclassing :class:`UnlearningMethod`
and decorating it with ``@UNLEARNING.register("name")``; see docs/components.md.
"""

from __future__ import annotations

from tasks.unlearning import approximate as _approximate  # noqa: F401  (registers methods)
from tasks.unlearning import exact as _exact  # noqa: F401
from tasks.unlearning import retrain_dp as _retrain_dp  # noqa: F401  (DP-SGD retraining)
from tasks.unlearning import sisa as _sisa  # noqa: F401
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
