"""Defences against the unlearning attacks, behind one registry (:data:`DEFENCES`).

========== ============ ===================================================================
name       acts on      mechanism (strength)
========== ============ ===================================================================
obfuscation update       Gaussian noise added to theta_u - theta (sigma)
pruning     update       global magnitude pruning of theta_u (ratio p)
fine_tuning update       theta_u trained on held-out data after unlearning (epochs)
label_only  outputs      one-hot argmax posteriors (none)
top_k       outputs      top-k posteriors, remainder spread evenly (k < C)
temperature outputs      softmax(z / T) (T)
dp_sgd      training     DP-SGD with opacus, epsilon from its accountant (noise multiplier)
========== ============ ===================================================================

The unlearning method ``retrain_dp`` (exact unlearning of DP-SGD-trained models, through which
the membership stage builds DP shadow and target models) is registered by ``tasks.unlearning``
(:mod:`tasks.unlearning.retrain_dp`). Importing this package registers the output defences in
the membership attack's ``OUTPUT_TRANSFORMS``.
"""

from __future__ import annotations

from tasks.defences import dp as _dp  # noqa: F401  (registers dp_sgd)
from tasks.defences import outputs as _outputs  # noqa: F401  (registers output defences)
from tasks.defences import update as _update  # noqa: F401  (registers update defences)
from tasks.defences.base import (
    DEFENCES,
    Defence,
    DefenceError,
    OutputDefence,
    TrainingDefence,
    UpdateContext,
    UpdateDefence,
)
from tasks.defences.dp import DPParams, DPResult, dp_epsilon, train_dp
from tasks.defences.outputs import defend_outputs, output_transform, register_output_transforms
from tasks.defences.update import prunable, prune_count

__all__ = [
    "DEFENCES",
    "DPParams",
    "DPResult",
    "Defence",
    "DefenceError",
    "OutputDefence",
    "TrainingDefence",
    "UpdateContext",
    "UpdateDefence",
    "defend_outputs",
    "dp_epsilon",
    "output_transform",
    "prunable",
    "prune_count",
    "register_output_transforms",
    "train_dp",
]
