"""The ``pair`` section: audit a model pair the user brings (theta, theta_u, and what it forgot).

Spec section::

    dataset: {name: files, path: data.npz}      # or any registered dataset
    pair:
      original: theta.pt                        # local path or pyarrow URI
      unlearned: theta_u.pt
      format: torch_state_dict                  # | torch_export | skops | onnx | posteriors
      model: {name: mlp, hidden: [64]}          # state dicts: or {factory: pkg.mod:function}
      forget: forget.txt                        # record ids (rows of x_train), or: unknown
      attacks: [{attack: inversion, config: {iterations: 200}}]   # default: all that fit
      membership: {set_num: 2, set_size: 200}   # shadow pairs (membership section settings)

Nothing of the provider is trained: the attacks that fit the pair's threat model run on it
(white-box formats: every attack; skops and onnx: the query-only ones; posteriors: those that
read stored posteriors, i.e. membership inference). Membership inference trains its shadow
pairs with the spec's ``model``, ``training`` and ``unlearning`` (a user's method by
``package.module:attr``), on the shadow half of the data. With a known forget set every attack
is scored (the usual tables: ``recoveries``, ``label_inference``, ``mia`` + ``membership``);
with ``forget: unknown`` the attacks' guesses land in ``guesses`` and ``membership_ranking``.
"""

from __future__ import annotations

from orchestrator.spec.stage_registry import STAGES, StageEntry
from orchestrator.stages.pair import attack_unit, membership_unit  # noqa: F401  (units)
from orchestrator.stages.pair.params import PairParams
from orchestrator.stages.pair.planning import plan_pair

STAGES.register("pair")(StageEntry(PairParams, plan_pair, replaces_core=True))
