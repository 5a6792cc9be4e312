"""Planning of the ``pair`` section: load the pair once (every format problem refused before any
work), choose the attacks its threat model allows, and plan one unit per attack plus the
shadow pairs of membership inference."""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.engine.plan import CorePlan, Unit
from orchestrator.spec.fingerprint import file_fingerprint
from orchestrator.spec.schema import Spec, stable_hash
from orchestrator.stages.membership.params import scenario
from orchestrator.stages.membership.planning import code_version, plan_side
from orchestrator.stages.pair.params import (
    PairAttack,
    PairParams,
    check_ids,
    model_config,
    read_forget_ids,
)
from tasks.analysis import SCORERS
from tasks.analysis.membership import ATTACKS_TABLE
from tasks.attacks import ATTACKS, ThreatModel
from tasks.mia_splits import effective_set_size, paper_split
from tasks.params import ParamError, to_dict
from tasks.unlearning import UNLEARNING


def load_user_pair(params: PairParams, dataset, device: str = "cpu",
                   files: dict[str, Any] | None = None):
    """The pair (or the supplied shadow pair ``files``) as :class:`tasks.pairs.UserPair`;
    state dicts get ``pair.model``'s module."""
    from tasks.models import build_torch_model
    from tasks.pairs import load_pair

    builder = None
    if params.model is not None:
        config = model_config(params.model)

        def builder():
            return build_torch_model(config, dataset.input_shape, dataset.num_classes,
                                     dataset.mean, dataset.std)

    files = files or {"original": params.original, "unlearned": params.unlearned}
    return load_pair(files["original"], files["unlearned"], params.format, dataset,
                     model_builder=builder, trusted=params.trusted, device=device)


def fits(threat: ThreatModel, pair, dataset) -> str:
    """Why an attack with ``threat`` cannot run on ``pair`` ("" when it can)."""
    if threat.knowledge != "paper":
        return "it needs reference knowledge (theta_0, N, the step size), which a pair " \
               "from outside does not come with"
    if threat.data_kind not in ("any", dataset.kind):
        return f"it attacks {threat.data_kind} data; this dataset is {dataset.kind}"
    if threat.shadow_pairs:
        return ""  # reads posteriors of chosen records: every format gives them
    if threat.white_box and not pair.white_box:
        return f"it needs the models' parameters; format {pair.format} gives queries only"
    if not pair.queryable:
        return f"it queries the models on inputs it crafts; format {pair.format} holds " \
               "stored posteriors only"
    return ""


def chosen_attacks(params: PairParams, pair, dataset) -> list[tuple[str, PairAttack]]:
    """(name, entry) of every attack to run: the listed ones (each must fit), else every
    registered attack that fits with its default configuration."""
    if params.attacks is not None:
        out = []
        for i, entry in enumerate(params.attacks):
            why = fits(entry.threat_model(), pair, dataset) or unfit(entry, pair, dataset)
            if why:
                raise ParamError(f"pair.attacks[{i}]", f"{entry.attack!r} cannot run on this "
                                                       f"pair: {why}")
            out.append((f"{entry.attack}-{i}" if _repeated(params, entry) else entry.attack,
                        entry))
        return out
    out = []
    for name in ATTACKS.names():
        try:
            entry = PairAttack(name)
        except ValueError:  # an attack whose defaults need more than a pair gives
            continue
        if not fits(entry.threat_model(), pair, dataset) and not unfit(entry, pair, dataset):
            out.append((name, entry))
    return out


def unfit(entry: PairAttack, pair, dataset) -> str:
    """Why the attack cannot attack the pair's architecture ("" when it can, or when the pair
    gives no parameters to look at)."""
    if not pair.white_box:
        return ""
    attack = ATTACKS.get(entry.attack)()
    return attack.unfit_model(entry.typed_config(), pair.original.module,
                              tuple(dataset.input_shape))


def _repeated(params: PairParams, entry: PairAttack) -> bool:
    return sum(e.attack == entry.attack for e in params.attacks or ()) > 1


def pair_identity(spec: Spec, params: PairParams) -> dict[str, Any]:
    """What the pair's results depend on: the files' contents, the data, what was forgotten."""
    forget = list(read_forget_ids(params.forget)) if params.forget_known else "unknown"
    return {"original": file_fingerprint(params.original),
            "unlearned": file_fingerprint(params.unlearned), "format": params.format,
            "model": params.model, "trusted": list(params.trusted),
            "shadow": [[file_fingerprint(item[k]) for k in ("original", "unlearned", "forget")]
                       for item in params.shadow],
            "dataset": spec.dataset.identity(), "forget": forget}


def plan_pair(spec: Spec, core: CorePlan, params: PairParams) -> list[Unit]:
    others = sorted(set(spec.stages) - {"pair"})
    if others:
        raise ParamError(others[0], "a spec with a pair section audits that pair alone; put "
                                    "attacks under pair.attacks and membership settings under "
                                    "pair.membership")
    dataset = core.dataset
    ids = read_forget_ids(params.forget) if params.forget_known else None
    if ids is not None:
        check_ids(ids, len(dataset.y_train))
    pair = load_user_pair(params, dataset)  # refuses a malformed pair before any work
    identity = pair_identity(spec, params)
    units: list[Unit] = []
    for seed in spec.seeds:
        for name, entry in chosen_attacks(params, pair, dataset):
            cls = ATTACKS.get(entry.attack)
            if entry.threat_model().shadow_pairs:
                check_membership_records(params, pair, dataset, ids)
                units.extend(_membership_units(spec, params, pair, dataset, identity, name,
                                               entry, seed))
                continue
            key = "pair-attack-" + stable_hash(
                {"pair": identity, "attack": entry.attack, "config": entry.config,
                 "name": name, "seed": seed, "code": code_version()}, 24)
            table, row_keys = "guesses", (key,)
            if ids is not None:
                scorer = SCORERS.get(cls.scorer)
                table = scorer.table
                if scorer.per_sample:
                    row_keys = tuple(f"{key}:{i}" for i in ids)  # rows by record id
            units.append(Unit(key, "attack", "pair_attack",
                              {"spec": spec, "seed": seed, "name": name, "entry": entry,
                               "params": params, "unit_key": key},
                              table, row_keys, label=f"pair {name} seed {seed}"))
    return units


def candidate_records(params: PairParams, available: np.ndarray, seed: int) -> np.ndarray:
    """forget unknown: the training records membership inference ranks (a seeded sample of
    those the pair answers for)."""
    size = min(params.candidates, len(available))
    return np.sort(np.random.default_rng([seed, 31]).choice(available, size, replace=False))


def negative_records(params: PairParams, available: np.ndarray, seed: int) -> np.ndarray:
    """Test records scored as never-used candidates beside the forgotten ones."""
    size = min(params.negatives, len(available))
    return np.sort(np.random.default_rng([seed, 23]).choice(available, size, replace=False))


def check_membership_records(params: PairParams, pair, dataset,
                             ids: tuple[int, ...] | None) -> None:
    """Stored posteriors must cover what membership inference scores (refused at planning)."""
    if ids is not None:
        missing = np.setdiff1d(np.asarray(ids), pair.records("train", dataset))
        if len(missing):
            raise ParamError("pair.forget", f"record {int(missing[0])} has no stored posteriors "
                                            "of both models (split: train)")
        if not len(pair.records("test", dataset)):
            raise ParamError("pair.original", "membership inference compares the forgotten "
                                              "records with never-used ones: store posteriors "
                                              "of test records too (split: test)")
    elif not len(pair.records("train", dataset)):
        raise ParamError("pair.original", "no posteriors of training records (split: train) "
                                          "to rank")


def _membership_units(spec: Spec, params: PairParams, pair, dataset, identity: dict,
                      name: str, entry: PairAttack, seed: int) -> list[Unit]:
    """Shadow pairs trained by the tool (the spec's model, training and unlearning, on the
    shadow half of the data), then one attack unit per unlearning method."""
    if params.shadow:
        return [_supplied_shadow_unit(spec, params, pair, dataset, identity, name, entry, seed)]
    settings = params.membership_params()
    split = paper_split(len(dataset.y_train), settings.split_seed, settings.replace_seed)
    size = effective_set_size(settings.set_size, len(split.side("shadow").positive),
                              settings.max_set_fraction, cap=settings.cap_set_size)
    sc = scenario("single", settings)
    units: list[Unit] = []
    for m, method in enumerate(spec.unlearning):
        cls = UNLEARNING.get(method.method)
        if spec.model.family not in cls.families:
            raise ParamError(f"unlearning[{m}].method",
                             f"{method.method!r} cannot unlearn a {spec.model.family} model "
                             f"({spec.model.name}), the shadow models' architecture")
        if cls.requires_pretraining:
            raise ParamError(f"unlearning[{m}].method",
                             f"{method.method!r} needs a pretrained theta_0, which shadow "
                             "pairs do not have; use retrain, sisa or a method without one")
        side_units, keys, pairs = plan_side(spec, m, split, "shadow", settings, sc, seed, size,
                                            {})
        units.extend(side_units)
        key = "pair-mia-" + stable_hash(
            {"pair": identity, "config": entry.config, "shadow": pairs, "seed": seed,
             "settings": to_dict(settings), "method": method.method,
             "code": code_version()}, 24)
        table, row_keys = _membership_rows(params, pair, dataset, entry, key, seed)
        units.append(Unit(key, "attack", "pair_membership",
                          {"spec": spec, "seed": seed, "method_index": m, "name": name,
                           "entry": entry, "params": params, "shadow_pairs": pairs,
                           "attack_key": key, "set_size": size},
                          table, row_keys, deps=tuple(dict.fromkeys(keys)),
                          label=f"pair membership {method.method} seed {seed}"))
    return units


def _membership_rows(params: PairParams, pair, dataset, entry: PairAttack, key: str,
                     seed: int) -> tuple[str, tuple[str, ...]]:
    if params.forget_known:
        # Every (feature, attack model) as exploratory, and the one pre-registered test.
        return ATTACKS_TABLE, (*(f"{key}:{f}:{a}:{c}" for f, a, c in entry.typed_config().entries()),
                       f"{key}:preregistered")
    return "membership_ranking", tuple(f"{key}:{r}" for r in candidate_records(
        params, pair.records("train", dataset), seed))


def _supplied_shadow_unit(spec: Spec, params: PairParams, pair, dataset, identity: dict,
                          name: str, entry: PairAttack, seed: int) -> Unit:
    """Membership inference on shadow pairs the user supplied: nothing to train."""
    for i, item in enumerate(params.shadow):
        shadow = load_user_pair(params, dataset, files=item)  # refused now, not in the unit
        check_ids(item["ids"], len(dataset.y_train))
        check_membership_records(params, shadow, dataset, item["ids"])
    key = "pair-mia-" + stable_hash({"pair": identity, "config": entry.config, "seed": seed,
                                     "settings": to_dict(params.membership_params()),
                                     "code": code_version()}, 24)
    table, row_keys = _membership_rows(params, pair, dataset, entry, key, seed)
    return Unit(key, "attack", "pair_membership",
                {"spec": spec, "seed": seed, "method_index": None, "name": name,
                 "entry": entry, "params": params, "shadow_pairs": None, "attack_key": key,
                 "set_size": None}, table, row_keys,
                label=f"pair membership (supplied shadow pairs) seed {seed}")
