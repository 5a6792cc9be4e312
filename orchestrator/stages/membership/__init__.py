"""Stage ``membership``: membership inference against unlearning (Chen et al.; ATTACKS.md B).

The stage builds all its own models (``replaces_core``): for every seed and unlearning method,
``set_num`` shadow and ``set_num`` target originals on sampled sets S_i, and per original
``unlearning_size`` unlearned models. Units:

- ``mia_original`` (kind train): one original M_i; saves its logits on S_i and the side's
  negatives, its train/test accuracy, and for torch models the weights.
- ``mia_unlearn`` (kind unlearn): a batch of deletions of one original (a whole chain for the
  ``chain`` scenario, in order); saves each M_ij's logits on the records its pair scores.
- ``mia_attack`` (kind attack): one scenario; turns the stored logits into a posterior case
  (through the output-defence transform) and runs the registered ``membership`` attack
  (every feature and attack model fitted on shadow pairs, the target pairs' records scored)
  and its scorer, and writes the ``mia`` and ``membership`` tables and the figures.

Every model is an artifact keyed by what determines it (data, recipe, S_i, deletions, seed),
so scenarios share models (``single`` and ``in_in`` use the same pairs) and reruns train
nothing twice. Scenarios::

    single   1 deleted record per pair is the positive (in_out)
    in_in    the same pairs; the positive is a record still in both models
    group    group_size records deleted per pair, all positives (k negatives per pair)
    online   retrain on (S_i minus U_ij) plus fresh replace-pool records
    chain    M_i -> M_i1 -> ... : version t deletes one more record; the attack compares
             version t with version t-1 (chain_reference: previous) or with M_i (original)

Modules: :mod:`.params` (settings, scenarios), :mod:`.planning` (keys, units), :mod:`.models`
(``mia_original``, ``mia_unlearn``), :mod:`.attack` (``mia_attack``, summaries). What an
unlearning method can do is read from its class (``retrains_from_scratch``: its unlearn units
wait for no original; ``supports_replacement``: ``online``; ``returns_ensemble``: shard count
in the rows; ``pair_privacy``: epsilon of a DP pair), never from its name.
"""

from __future__ import annotations

from orchestrator.spec.stage_registry import STAGES, StageEntry
from orchestrator.stages.membership import models as _models  # noqa: F401  (unit functions)
from orchestrator.stages.membership.attack import (
    StoredLogits,
    attack_and_score,
    mia_attack,
    pair_privacy,
    pair_rows,
    privacy_columns,
    side_accuracy,
)
from orchestrator.stages.membership.params import (
    SCENARIOS,
    MembershipParams,
    Scenario,
    eval_records,
    scenario,
)
from orchestrator.stages.membership.planning import (
    mia_original_key,
    mia_unlearned_key,
    plan_membership,
)

STAGES.register("membership")(StageEntry(params=MembershipParams, planner=plan_membership,
                                         replaces_core=True))

__all__ = [
    "SCENARIOS",
    "MembershipParams",
    "Scenario",
    "StoredLogits",
    "attack_and_score",
    "eval_records",
    "mia_attack",
    "mia_original_key",
    "mia_unlearned_key",
    "pair_privacy",
    "pair_rows",
    "plan_membership",
    "privacy_columns",
    "scenario",
    "side_accuracy",
]
