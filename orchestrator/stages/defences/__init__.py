"""Stage ``defences``: every defence of both papers, swept over strengths, measured against the
attack it targets, with the utility it costs (table ``defences``, figure leakage vs utility).

Spec section::

    defences:
      attack: recovery            # default attack of every sweep:
                                  #   recovery | label_inference | membership
      sweeps:
        - defence: pruning        # a name of tasks.defences.DEFENCES
          strengths: [0.3, 0.6, 0.8, 0.9]
          params: {scope: weights}   # fixed settings besides the swept strength
      recovery: {knowledge: reference, label_mode: known, iterations: 300, restarts: 4}
      membership: {set_num: 3, set_size: 500, unlearning_size: 20, attack_models: [dt]}

Where each defence acts (``acts_on``) decides how it is measured:

- ``update`` defences (obfuscation, pruning, fine-tuning) against **recovery**: the core plan
  trains theta and unlearns every request; per (defence, strength) one unit defends each
  theta_u (seeded per request), runs feature recovery (:func:`tasks.attacks.inversion.recover`,
  the same restart seeds for every strength, so rows are paired) on the defended pair and scores
  PSNR against the forgotten samples. Utility: test accuracy of theta and of the defended theta_u
  (with ``finetune_source: test``, fine-tuning uses a seeded half of the test split and every
  row of the stage measures utility on the other half; ``utility_records`` says how many).
- ``outputs`` defences (label-only, top-k, temperature) against **membership**: the membership
  stage's shadow and target models are planned once (:func:`plan_membership`, shared with it);
  per (defence, strength) one unit applies the defence to the stored logits of shadow *and*
  target pairs (the adaptive attacker) through the membership attack's ``OUTPUT_TRANSFORMS``
  seam, before every feature including the classical baseline (ATTACKS.md 6.4), and refits the
  attack. These defences keep the argmax, so test accuracy is unchanged by construction.
- ``training`` (DP-SGD) against **membership**: per noise multiplier, every shadow and target
  model (originals and retrained) is trained with DP-SGD through the unlearning method
  ``retrain_dp``; ``epsilon`` is opacus' accountant's for the originals' training (replayed by
  :func:`tasks.defences.dp_epsilon`, equal to what training reported) and ``epsilon_pair`` the
  released pair's, composed over theta's and theta_u's trainings
  (:func:`tasks.defences.dp.dp_epsilon_pair`; inf with ``noise: shared``).

Every sweep is preceded by one undefended row per attack (``defence = "none"``) unless
``baseline: false``. One ``defences`` row per (defence, strength, attack, seed, unlearning
method, and for membership attack model - every one of ``membership.attack_models``): the
attack metric (mean PSNR in dB for recovery, target AUC of ``primary_feature`` for membership,
label accuracy for label inference), utility (originals and unlearned models on the same test
records), epsilon where it applies. The figure plots leakage against utility, one curve per
defence, under ``RESULTS/<experiment>/figures/``.

- ``update`` or ``outputs`` defences against **label_inference**: the label-inference stage's
  class-share requests and probes (crafted once against the undefended theta) are planned
  once; per (defence, strength) one unit scores the probes on the published theta_u (update)
  or on defended posteriors of both models (outputs). Metric: label accuracy over requests.

Recovery under output or training defences, membership under update defences and DP-SGD
against label inference are not implemented: such a sweep is rejected at validation.

Modules: :mod:`.settings` (the section), :mod:`.planning`, :mod:`.common` (row columns,
held-out data, figure points), :mod:`.attack_unit` (feature recovery and label inference
under a defence), :mod:`.membership_unit` and :mod:`.figure`.
"""

from __future__ import annotations

from orchestrator.spec.stage_registry import STAGES, StageEntry
from orchestrator.stages.defences import attack_unit as _attack  # noqa: F401  (unit functions)
from orchestrator.stages.defences import figure as _figure  # noqa: F401
from orchestrator.stages.defences import membership_unit as _membership  # noqa: F401
from orchestrator.stages.defences.figure import draw_figure
from orchestrator.stages.defences.planning import plan_defences
from orchestrator.stages.defences.settings import ATTACKS, SUPPORTED, TABLE, DefencesStage, Sweep

STAGES.register("defences")(StageEntry(params=DefencesStage, planner=plan_defences,
                                       replaces_core=True))

__all__ = ["ATTACKS", "SUPPORTED", "TABLE", "DefencesStage", "Sweep", "draw_figure",
           "plan_defences"]
