"""Settings of the ``defences`` section (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.spec.schema import Spec
from orchestrator.stages.attacks.label_inference import LabelInferenceStage
from orchestrator.stages.attacks.planning import AttackEntry
from orchestrator.stages.membership import MembershipParams
from tasks.attacks.inversion import InversionConfig
from tasks.attacks.membership import CLASSICAL
from tasks.attacks.probing import ProbeConfig
from tasks.defences import DEFENCES
from tasks.defences.base import DefenceError
from tasks.params import FieldError, ParamError, check
from tasks.registry import UnknownComponentError

TABLE = "defences"
# Built-in attack names of a sweep; any name of the section's ``attacks:`` entries works too.
ATTACKS = ("recovery", "label_inference", "membership")
# Which attacks each kind of defence is measured against (see the package docstring): update
# defences against any case-based attack, output defences against black-box ones (a white-box
# attacker reads parameters, not posteriors) and membership, DP-SGD against membership.
SUPPORTED = {"update": ("recovery", "label_inference", "<any attacks: entry>"),
             "outputs": ("membership", "label_inference", "<black-box attacks: entry>"),
             "training": ("membership",)}


@dataclass(frozen=True)
class Sweep:
    """One defence over a list of strengths (``null`` for a defence without one)."""

    defence: str
    strengths: tuple[float | None, ...] = (None,)
    params: dict[str, Any] = field(default_factory=dict)
    # recovery | label_inference | membership | a name of the section's ``attacks``
    attack: str | None = None

    def __post_init__(self) -> None:
        try:
            cls = DEFENCES.get(self.defence)
        except UnknownComponentError as err:
            raise FieldError("defence", str(err)) from None
        if not self.strengths:
            raise FieldError("strengths", "must not be empty (null: a defence without one)")
        d = cls()
        for i, s in enumerate(self.strengths):
            try:
                d.params(s, self.params, "params")
            except ParamError as err:  # the swept field: name the strength that set it
                if s is not None and err.path == f"params.{cls.strength_field}":
                    raise FieldError(f"strengths[{i}]",
                                     f"{cls.strength_field} {err.message}") from None
                raise
            except DefenceError as err:
                raise FieldError("strengths" if s is not None else "params", str(err)) from None


@dataclass(frozen=True)
class DefencesStage:
    """Settings of the ``defences`` section."""

    attack: str = "recovery"
    sweeps: tuple[Sweep, ...] = ()
    # Any further attack, written like an entry of the ``attacks`` section (a registered name
    # or package.module:Class); a sweep names it by its key.
    attacks: dict[str, AttackEntry] = field(default_factory=dict)
    baseline: bool = True  # an undefended row per attack
    # --- recovery ---
    recovery: InversionConfig = field(default_factory=lambda: InversionConfig(
        name="defended", iterations=300, restarts=4))
    methods: tuple[str, ...] | None = None  # unlearning methods attacked (default: all)
    max_requests: int | None = 8  # forget requests attacked per method and seed
    finetune_source: Literal["public", "test"] = "public"
    # --- membership ---
    membership: MembershipParams = field(default_factory=lambda: MembershipParams(
        set_num=3, set_size=500, unlearning_size=20, scenarios=("single",),
        attack_models=("dt",), shuffled_control=(), membership_rows=False, figures=False))
    primary_feature: str = "sorted_diff"
    # --- label inference (probes crafted once per theta, white box by default) ---
    label_inference: LabelInferenceStage = field(default_factory=lambda: LabelInferenceStage(
        shares=(1.0,), boxes=("white",), scores=("prob",), probes=ProbeConfig(box="white"),
        figure=False))
    figure: bool = True

    def __post_init__(self) -> None:
        if not self.sweeps:
            raise FieldError("sweeps", "give at least one {defence, strengths} entry")
        clash = sorted(set(self.attacks) & set(ATTACKS))
        if clash:
            raise ValueError(f"attacks: {clash} are built-in attack names; rename the entries")
        for i, sw in enumerate(self.sweeps):
            attack = sw.attack or self.attack
            kind = DEFENCES.get(sw.defence).acts_on
            if attack not in ATTACKS and attack not in self.attacks:
                raise FieldError(f"sweeps[{i}].attack", f"{attack!r} is neither a built-in attack "
                                 f"({', '.join(ATTACKS)}) nor a key of attacks "
                                 f"({', '.join(sorted(self.attacks)) or 'none given'})")
            if attack in self.attacks:
                entry = self.attacks[attack]
                threat = entry.attack_class()().threat_model(entry.typed_config())
                if kind == "training" or (kind == "outputs" and threat.white_box):
                    raise FieldError(
                        f"sweeps[{i}]", f"defence {sw.defence!r} acts on {kind}; attack "
                        f"{attack!r} ({'white' if threat.white_box else 'black'}-box) is not "
                        "measured against it (output defences: black-box attacks; DP-SGD: "
                        "membership)")
                continue
            if attack not in SUPPORTED[kind]:
                raise FieldError(
                    f"sweeps[{i}]", f"defence {sw.defence!r} acts on {kind}; it is measured "
                    f"against {' or '.join(SUPPORTED[kind])} here, not {attack!r} "
                    "(DP-SGD against the Hu et al. attacks is not implemented)")
        check("max_requests", self.max_requests, low=1, integer=True, optional=True)
        if self.membership.output_defence != "none":
            raise FieldError("membership.output_defence", "the defences stage sets it per "
                                                          "sweep; leave it 'none'")
        if self.primary_feature not in (*self.membership.features, CLASSICAL):
            raise ValueError(f"primary_feature {self.primary_feature!r} is not among "
                             f"membership.features {list(self.membership.features)}")

    def swept_attacks(self) -> list[str]:
        return list(dict.fromkeys(sw.attack or self.attack for sw in self.sweeps))


def _strength(value) -> float | None:
    return None if value is None else float(value)


def defence_points(spec: Spec, stage: DefencesStage, attack: str):
    """(defence, strength, params) in sweep order, the baseline first."""
    out = [("none", None, {})] if stage.baseline else []
    for sw in stage.sweeps:
        if (sw.attack or stage.attack) == attack:
            out += [(sw.defence, _strength(s), dict(sw.params)) for s in sw.strengths]
    return out

