"""``unlearn-audit tune``: search attack or defence settings with Ray Tune and Optuna.

=================  ============================================================================
module             holds
=================  ============================================================================
``spec``           the ``search:`` block of a spec -> :class:`SearchPlan`
``space``          the searched dimensions and their define-by-run sampling
``study``          the Optuna study on its journal file, the sampler, stale-trial recovery
``base``           the :class:`Objective` base, the :data:`OBJECTIVES` registry, :class:`TargetSet`
``objectives``     the inversion, probing and defence objectives (imports every objective)
``membership``     the membership-inference objective (its own shadow and target models)
``evaluate``       one configuration scored on the search or the held-out targets
``tune``           the Ray Tune driver: searcher, ASHA, trial body, :func:`run_search`
``heldout``        the ``trials`` table and the held-out ``best`` / ``pareto`` tables
``figures``        ``search_best_so_far.png`` and ``search_pareto.png``
``cli``            the ``tune`` sub-parser and command
=================  ============================================================================

The names below resolve on first use (PEP 562): the CLI imports ``orchestrator.search.cli`` to
add the ``tune`` sub-parser, and that must not load torch, Ray or Optuna (``--help`` answers in
well under a second).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and readers
    from orchestrator.search.base import OBJECTIVES, Objective, TargetSet
    from orchestrator.search.cli import add_tune_parser, cmd_tune
    from orchestrator.search.evaluate import evaluate_config
    from orchestrator.search.figures import write_figures
    from orchestrator.search.membership import MembershipAttackConfig, MembershipObjective
    from orchestrator.search.objectives import ensure_models, load_cases, prepare_targets
    from orchestrator.search.result_tables import (
        chosen_rows,
        pareto_front,
        trial_rows,
        write_chosen,
        write_trials,
    )
    from orchestrator.search.space import Dimension, parse_dimension, suggest_params
    from orchestrator.search.spec import (
        SearchPlan,
        SearchSpec,
        load_search,
        load_search_file,
        parse_search,
    )
    from orchestrator.search.study import (
        SearchStateError,
        finished,
        make_sampler,
        open_study,
        recover_stale,
    )
    from orchestrator.search.tune import SearchOutcome, journal_searcher_class, run_search

_EXPORTS = {
    # OBJECTIVES comes from ``objectives``, which registers every built-in objective.
    "OBJECTIVES": "objectives", "Objective": "base", "TargetSet": "base",
    "add_tune_parser": "cli", "cmd_tune": "cli",
    "evaluate_config": "evaluate",
    "write_figures": "figures",
    "chosen_rows": "result_tables", "pareto_front": "result_tables",
    "trial_rows": "result_tables", "write_chosen": "result_tables",
    "write_trials": "result_tables",
    "MembershipAttackConfig": "membership", "MembershipObjective": "membership",
    "ensure_models": "objectives", "load_cases": "objectives", "prepare_targets": "objectives",
    "Dimension": "space", "parse_dimension": "space", "suggest_params": "space",
    "SearchPlan": "spec", "SearchSpec": "spec", "load_search": "spec",
    "load_search_file": "spec", "parse_search": "spec",
    "SearchStateError": "study", "finished": "study", "make_sampler": "study",
    "open_study": "study", "recover_stale": "study",
    "SearchOutcome": "tune", "journal_searcher_class": "tune", "run_search": "tune",
}

__all__ = [
    "OBJECTIVES",
    "Dimension",
    "MembershipAttackConfig",
    "MembershipObjective",
    "Objective",
    "SearchOutcome",
    "SearchPlan",
    "SearchSpec",
    "SearchStateError",
    "TargetSet",
    "add_tune_parser",
    "chosen_rows",
    "cmd_tune",
    "ensure_models",
    "evaluate_config",
    "finished",
    "journal_searcher_class",
    "load_cases",
    "load_search",
    "load_search_file",
    "make_sampler",
    "open_study",
    "pareto_front",
    "parse_dimension",
    "parse_search",
    "prepare_targets",
    "recover_stale",
    "run_search",
    "suggest_params",
    "trial_rows",
    "write_chosen",
    "write_figures",
    "write_trials",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
