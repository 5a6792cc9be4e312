"""Stage ``per_example``: per-record, calibrated leakage of unlearning (issue 14).

U-LiRA (Hayes et al., SaTML 2025) and the NeurIPS 2023 unlearning challenge's epsilon score
both need many models per audit. For every seed and unlearning method the stage trains
``models`` members (stacked ensembles, ``members_per_task`` per Ray task), unlearns each
member's forget set (stacked where the method's maths allows), scores every model on every
target record in a Ray Data pipeline, and fits per-record Gaussians to the logit-scaled
confidence. Units:

- ``pe_train`` (kind train): a chunk of originals, or of the challenge design's references;
  shared by every method with the same training recipe.
- ``pe_unlearn`` (kind unlearn): a chunk of unlearned members.
- ``pe_score`` (kind attack): the (models x records) pipeline, Parquet in the artifact store.
- ``pe_analyse`` (kind attack): tables ``ulira``, ``per_example`` and ``budget`` (what a
  shadow budget buys).
- ``pe_figures``: epsilon distribution, log-log ROC beside Chen et al., TPR against the
  shadow budget, most exposed records.
- ``pe_leaderboard``: table ``leaderboard``, methods ranked by leak with utility and cost.

Designs and settings: :mod:`.params`; the statistics: :mod:`tasks.analysis.per_example` and
:mod:`tasks.analysis.epsilon`.
"""

from __future__ import annotations

from orchestrator.spec.stage_registry import STAGES, StageEntry
from orchestrator.stages.per_example import analysis as _analysis  # noqa: F401  (unit functions)
from orchestrator.stages.per_example import figures as _figures  # noqa: F401
from orchestrator.stages.per_example import leaderboard as _leaderboard  # noqa: F401
from orchestrator.stages.per_example import models as _models  # noqa: F401
from orchestrator.stages.per_example import scoring as _scoring  # noqa: F401
from orchestrator.stages.per_example.params import PerExampleParams
from orchestrator.stages.per_example.planning import MODELS_TABLE, SCORING_TABLE, plan_per_example

STAGES.register("per_example")(StageEntry(
    params=PerExampleParams, planner=plan_per_example, replaces_core=True,
    artifact_tables=(MODELS_TABLE, SCORING_TABLE)))

__all__ = ["PerExampleParams", "plan_per_example"]
