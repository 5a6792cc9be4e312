"""Label inference by probing samples (Hu et al., S&P 2024, section 4 of ATTACKS.md).

1. For every class t, craft probes x' that the original model M labels t with high confidence:
   minimise -log f(x')[t] (reference; ``loss: ce``) or the margin max_{i != t} log f_i - log f_t
   (paper Eq. 8 on log-probabilities; ``loss: margin``) over x' in [0, 1]^d, with
   * ``box: white`` — autograd gradients of M, or
   * ``box: black`` — ZOO: symmetric finite differences over a batch of coordinates, the
     queries of an iteration (all probes x (2c + 1) points) built and sent through
     :class:`tasks.cases.QueryAccess`, which counts them, ``query_chunk`` rows at a time;
     when fewer coordinates than inputs are probed per iteration they are drawn by ZOO
     importance sampling (max-pooled change map);
   both with coordinate-wise Adam, early abort, the best iterate kept, and at most
   ``max_calls`` calls of ``iterations_per_call`` iterations per probe (capped attempts).
2. Decision rule (reference): per probe j, l_j = argmax M(x_j) and
   d_j = M_u(x_j)[l_j] - M(x_j)[l_j]; average d_j per class over the first m probes labelled
   that class; predict the class whose own-class confidence drops most (top-K: the K smallest).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from tasks.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfigError,
    AttackResult,
    NonFiniteLossError,
    ThreatModel,
    target_seeds,
)
from tasks.cases import Case, PublicMetadata, QueryAccess

__all__ = [
    "LabelInferenceResult",
    "ProbeConfig",
    "Probes",
    "ProbingLabelInference",
    "craft_probes",
    "importance_weights",
    "infer_label",
    "original_case",
    "score_probes",
    "zoo_gradient",
]


@dataclass(frozen=True)
class ProbeConfig:
    box: Literal["white", "black"] = "black"
    probes_per_class: int = 10  # m
    loss: Literal["ce", "margin"] = "ce"  # on log-probabilities (what a black box returns)
    lr: float = 0.1
    lr_low: float = 0.02  # used once confidence > 0.9 but below ``accept``
    iterations_per_call: int = 20
    max_calls: int = 10  # attempt cap per probe
    coordinates: int = 1024  # per iteration (black box); min(coordinates, d) are used
    h: float = 1e-4
    # ZOO importance sampling (reference: on): when fewer coordinates than inputs are probed,
    # draw them in proportion to how much each region of the probe has already moved.
    importance: bool = True
    importance_floor: float = 0.01
    accept: float = 0.9995
    early_abort_every: int = 2
    top_k: int = 1
    # Own-class change measured on probabilities (reference) or on log-odds.
    score: Literal["prob", "logodds"] = "prob"
    dry_run: bool = False  # one iteration of one call
    # Rows per model call while crafting: a black-box iteration queries probes x (2c + 1)
    # points (about 200,000 CIFAR-10 images at the defaults), built and sent in chunks of this
    # many so memory stays bounded; query counts do not depend on it.
    query_chunk: int = 4096

    def __post_init__(self) -> None:
        from tasks.params import check

        for name in ("probes_per_class", "iterations_per_call", "max_calls", "coordinates",
                     "top_k", "query_chunk", "early_abort_every"):
            check(name, getattr(self, name), low=1, integer=True)
        check("accept", self.accept, low=0, low_open=True, high=1)
        for name in ("h", "lr", "lr_low"):
            check(name, getattr(self, name), low=0, low_open=True)
        # > 0: every coordinate stays reachable.
        check("importance_floor", self.importance_floor, low=0, low_open=True)


@dataclass
class Probes:
    """C * m crafted probes against one original model (class-major order)."""

    x: np.ndarray  # (C*m, *input_shape) in [0, 1]
    target: np.ndarray  # (C*m,) the class each probe was crafted for
    confidence: np.ndarray  # (C*m,) M(x)[target] at the kept iterate
    accepted: np.ndarray  # (C*m,) bool: confidence >= accept
    queries: np.ndarray  # (C*m,) queries (black) or forward passes (white) spent per probe
    calls: np.ndarray  # (C*m,) calls used per probe
    box: str = "black"
    loss: str = "ce"
    wall_s: float = 0.0

    @property
    def total_queries(self) -> int:
        return int(self.queries.sum())

    def failures_by_class(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.target[~self.accepted], minlength=num_classes)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("x", "target", "confidence", "accepted",
                                              "queries", "calls")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], box: str, loss: str) -> Probes:
        return cls(**{k: arrays[k] for k in ("x", "target", "confidence", "accepted",
                                             "queries", "calls")}, box=box, loss=loss)


@dataclass
class LabelInferenceResult(AttackResult):
    predicted: list[np.ndarray]  # (top_k,) per target, most-dropped class first
    delta_by_class: list[np.ndarray]  # (C,) mean own-class confidence change (NaN: no probe)
    queries: np.ndarray  # (T,) crafting + scoring queries per target
    probes_failed: np.ndarray  # (T,)
    crafting_queries: np.ndarray | None = None  # (T,)
    scoring_queries: np.ndarray | None = None  # (T,)
    n_probes: np.ndarray | None = None  # (T,)

    def per_target(self) -> dict[str, list]:
        return {"predicted": self.predicted, "delta_by_class": self.delta_by_class,
                "queries": list(self.queries), "probes_failed": list(self.probes_failed)}


def original_case(metadata: PublicMetadata, theta: torch.nn.Module | None,
                  query: QueryAccess, device: torch.device | str = "cpu") -> Case:
    """A case holding only the original model (probes are crafted before any unlearning)."""
    return Case(metadata, theta=theta, query_original=query, device=torch.device(device))


# --- losses and gradients ----------------------------------------------------------------------

def _probe_loss(probs: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss from probability vectors (n, C); -log p_t computed as -log1p(-sum_{i!=t} p_i) so it
    keeps its precision when p_t is within float32 rounding of 1."""
    probs = probs.double()
    mask = F.one_hot(target, probs.shape[-1]).bool()
    rest = probs.masked_fill(mask, 0.0)
    pt = probs.gather(-1, target[:, None]).squeeze(-1)
    precise = torch.log1p(-rest.sum(-1).clamp(max=0.5))
    log_pt = torch.where(pt > 0.5, precise, torch.log(pt.clamp_min(1e-300)))
    if kind == "ce":
        return -log_pt
    return torch.log(rest.max(-1).values.clamp_min(1e-300)) - log_pt


def zoo_gradient(loss_fn, x: torch.Tensor, coords: torch.Tensor, h: float,
                 chunk: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Symmetric finite differences (f(x + h e_i) - f(x - h e_i)) / 2h at ``coords``.

    The B * 2c perturbed points (row r: point ``r // 2c``, coordinate ``coords[., r % c]``,
    +h for ``r % 2c < c``, else -h) are built and evaluated ``chunk`` rows at a time, so the
    (B, 2c, d) tensor of all of them never exists.

    Args:
        loss_fn: (points (n, d), owner (n,)) -> (n,) losses, ``owner`` the row of ``x`` each
            point perturbs; called once per chunk, in row order (once in all by default).
        x: (B, d) points; coords: (B, c) coordinate indices per point.
        chunk: rows per ``loss_fn`` call (default: all B * 2c).
        dtype: dtype of the points handed to ``loss_fn`` (default: ``x``'s). The perturbed
            coordinate is computed in ``x``'s precision and then cast, so float32 points equal
            the float32 cast of the float64 ones.
    Returns:
        (B, c) gradient estimates.
    """
    b, c = coords.shape
    total = b * 2 * c
    chunk = total if chunk is None else max(1, int(chunk))
    base = x if dtype is None else x.to(dtype)  # (B, d): small, cast once
    values = []
    for lo in range(0, total, chunk):
        flat = torch.arange(lo, min(lo + chunk, total))
        owner = flat // (2 * c)
        k = flat % (2 * c)
        col = coords[owner, k % c]
        step = h * (1.0 - 2.0 * (k >= c).to(x.dtype))  # +h, then -h; exact in x's dtype
        pts = base[owner]  # (n, d), a fresh copy per chunk
        pts[torch.arange(len(flat)), col] = (x[owner, col] + step).to(pts.dtype)
        values.append(loss_fn(pts, owner).reshape(-1))
    v = torch.cat(values).reshape(b, 2 * c)
    return (v[:, :c] - v[:, c:]) / (2 * h)


def importance_weights(moved: torch.Tensor, shape: tuple[int, ...], floor: float
                       ) -> torch.Tensor:
    """ZOO importance map: sampling weights (B, d) for B probes, proportional to the largest
    absolute change ``moved`` (B, d) within each region, plus ``floor``.

    Images (C, H, W) are max-pooled per channel over regions of about H/8 x W/8 pixels and
    spread back over their pixels; other inputs use the change of each coordinate.
    """
    change = moved.abs()
    if len(shape) == 3 and min(shape[1:]) >= 8:
        c, h, w = shape
        kh, kw = max(1, h // 8), max(1, w // 8)
        img = change.reshape(-1, c, h, w)
        pooled = F.max_pool2d(img, (kh, kw), ceil_mode=True)
        change = (pooled.repeat_interleave(kh, -2).repeat_interleave(kw, -1)[..., :h, :w]
                  .reshape(len(moved), -1))
    weights = change + floor
    return weights / weights.sum(-1, keepdim=True)


class _CoordAdam:
    """ZOO-ADAM: Adam with a step counter per coordinate."""

    def __init__(self, shape, beta1=0.9, beta2=0.999, eps=1e-8):
        self.m = torch.zeros(shape, dtype=torch.float64)
        self.v = torch.zeros(shape, dtype=torch.float64)
        self.t = torch.zeros(shape, dtype=torch.float64)
        self.b1, self.b2, self.eps = beta1, beta2, eps

    def step(self, rows, coords, g, lr):
        """rows (B,), coords (B, c), g (B, c), lr (B,) -> update (B, c) to add to x."""
        r = rows[:, None]
        self.t[r, coords] += 1
        t = self.t[r, coords]
        self.m[r, coords] = self.b1 * self.m[r, coords] + (1 - self.b1) * g
        self.v[r, coords] = self.b2 * self.v[r, coords] + (1 - self.b2) * g * g
        mhat = self.m[r, coords] / (1 - self.b1**t)
        vhat = self.v[r, coords] / (1 - self.b2**t)
        return -lr[:, None] * mhat / (vhat.sqrt() + self.eps)


# --- crafting ----------------------------------------------------------------------------------

def craft_probes(case: Case, config: ProbeConfig, seed: int = 0) -> Probes:
    """Craft ``probes_per_class`` probes per class against the case's original model.

    All probes are optimised together; a black-box iteration is one batched query.
    """
    meta = case.metadata
    start = time.perf_counter()
    if config.box == "white":
        if case.theta is None:
            raise AttackConfigError("box 'white' needs theta in the case")
        model = case.theta.eval()
    elif case.query_original is None:
        raise AttackConfigError("box 'black' needs query access to the original model")
    shape = tuple(meta.input_shape)
    d = int(np.prod(shape))
    m, n_cls = config.probes_per_class, meta.num_classes
    target = torch.arange(n_cls).repeat_interleave(m)
    inits = []
    for t in range(n_cls):
        for j in range(m):
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + t * 1009 + j)
            inits.append(torch.randn(d, generator=gen, dtype=torch.float64).clamp(0, 1))
    x = torch.stack(inits)  # (P, d) float64 master copy
    x_start = x.clone()
    n_probes = len(x)
    queries = np.zeros(n_probes, dtype=np.int64)
    calls = np.zeros(n_probes, dtype=np.int64)
    device = case.device

    def probs_of(points: torch.Tensor) -> torch.Tensor:
        out = []
        for lo in range(0, len(points), config.query_chunk):
            inp = points[lo: lo + config.query_chunk].reshape(-1, *shape).float().to(device)
            if config.box == "black":
                p = case.query_original(inp)
            else:
                with torch.no_grad():
                    p = torch.softmax(model(inp), dim=-1)
            out.append(p.cpu())
        return torch.cat(out)

    def loss_at(points: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        p = probs_of(points)
        if not torch.isfinite(p).all():
            raise NonFiniteLossError("the model returned non-finite probabilities while "
                                     "crafting probes; aborting")
        return _probe_loss(p, tgt, config.loss)

    best_loss = loss_at(x, target)
    queries += 1
    best_x = x.clone()
    opt = _CoordAdam(x.shape)
    accepted = torch.exp(-_probe_loss(probs_of(best_x), target, "ce")) >= config.accept
    queries += 1
    n_coords = min(config.coordinates, d)
    gen = torch.Generator().manual_seed(int(seed) + 17)
    max_calls = 1 if config.dry_run else config.max_calls
    iters = 1 if config.dry_run else config.iterations_per_call
    for _call in range(max_calls):
        active = torch.nonzero(~accepted).flatten()
        if len(active) == 0:
            break
        calls[active.numpy()] += 1
        conf = torch.exp(-best_loss) if config.loss == "ce" else None
        if conf is None:
            conf = torch.exp(-_probe_loss(probs_of(best_x[active]), target[active], "ce"))
            queries[active.numpy()] += 1
            lr_all = torch.full((n_probes,), config.lr, dtype=torch.float64)
            lr_all[active] = torch.where(conf > 0.9, config.lr_low, config.lr).double()
        else:
            lr_all = torch.where(conf > 0.9, config.lr_low, config.lr).double()
        x[active] = best_x[active]  # each call continues from the last kept result
        running = active.clone()
        checkpoint = best_loss[running].clone()
        for it in range(1, iters + 1):
            if len(running) == 0:
                break
            xs, tg = x[running], target[running]
            if config.box == "black":
                if n_coords == d:
                    coords = torch.arange(d).expand(len(running), d)
                elif config.importance:
                    weights = importance_weights(xs - x_start[running], shape,
                                                 config.importance_floor)
                    coords = torch.multinomial(weights, n_coords, replacement=False,
                                               generator=gen)
                else:
                    coords = torch.stack([torch.randperm(d, generator=gen)[:n_coords]
                                          for _ in range(len(running))])
                def chunk_loss(pts, owner, tg=tg):
                    return loss_at(pts, tg[owner])

                g = zoo_gradient(chunk_loss, xs, coords, config.h, chunk=config.query_chunk,
                                 dtype=torch.float32)
                queries[running.numpy()] += 2 * n_coords
            else:
                xin = xs.float().reshape(-1, *shape).to(device).requires_grad_(True)
                logp = F.log_softmax(model(xin), dim=-1)
                if config.loss == "ce":
                    lval = -logp.gather(1, tg[:, None].to(device)).squeeze(1)
                else:
                    other = logp.masked_fill(F.one_hot(tg.to(device), n_cls).bool(), -1e30)
                    lval = other.max(-1).values - logp.gather(1, tg[:, None].to(device))[:, 0]
                gx = torch.autograd.grad(lval.sum(), xin)[0]
                coords = torch.arange(d).expand(len(running), d)
                g = gx.reshape(len(running), d).double().cpu()
                queries[running.numpy()] += 1
            if not torch.isfinite(g).all():
                raise NonFiniteLossError("non-finite probe gradient; aborting")
            upd = opt.step(running, coords, g, lr_all[running])
            rows = running[:, None]
            x[rows, coords] = (x[rows, coords] + upd).clamp(0.0, 1.0)
            cur = loss_at(x[running], tg)
            queries[running.numpy()] += 1
            better = cur < best_loss[running]
            best_loss[running[better]] = cur[better]
            best_x[running[better]] = x[running[better]]
            if it % config.early_abort_every == 0:
                stalled = cur > 0.9999 * checkpoint
                checkpoint = cur[~stalled]
                running = running[~stalled]
        conf_now = torch.exp(-_probe_loss(probs_of(best_x), target, "ce"))
        queries += 1
        accepted = conf_now >= config.accept
    final = probs_of(best_x)
    queries += 1
    confidence = final[torch.arange(n_probes), target].double().numpy()
    return Probes(x=best_x.float().reshape(n_probes, *shape).numpy(), target=target.numpy(),
                  confidence=confidence, accepted=accepted.numpy(), queries=queries,
                  calls=calls, box=config.box, loss=config.loss,
                  wall_s=time.perf_counter() - start)


# --- decision rule -----------------------------------------------------------------------------

def _own_logodds(p: np.ndarray, label: np.ndarray) -> np.ndarray:
    rows = np.arange(len(label))
    own = p[rows, label]
    rest = p.sum(1) - own  # 1 - p_own, precise even when p_own rounds to 1
    rest = np.where(rest > 0, rest, np.finfo(np.float32).tiny)
    return np.log(np.maximum(own, 1e-300)) - np.log(rest)


def infer_label(p_original: np.ndarray, p_unlearned: np.ndarray, num_classes: int, m: int,
                top_k: int = 1, score: str = "prob") -> tuple[np.ndarray, np.ndarray]:
    """Reference decision rule on probe posteriors (P, C) before and after unlearning.

    ``score: prob`` (reference) measures the own-class change in probability; ``logodds``
    measures it in log(p / (1 - p)), which does not shrink for probes whose confidence is
    saturated near 1. Returns (predicted classes (top_k,), mean own-class change per class
    (C,), NaN where no probe is labelled that class)."""
    p_original = np.asarray(p_original, dtype=np.float64)
    p_unlearned = np.asarray(p_unlearned, dtype=np.float64)
    label = p_original.argmax(1)
    rows = np.arange(len(label))
    if score == "prob":
        change = p_unlearned[rows, label] - p_original[rows, label]
    else:
        change = _own_logodds(p_unlearned, label) - _own_logodds(p_original, label)
    delta = np.full(num_classes, np.nan)
    for t in range(num_classes):
        sel = np.nonzero(label == t)[0][:m]
        if len(sel):
            delta[t] = change[sel].mean()
    order = np.argsort(np.where(np.isnan(delta), np.inf, delta), kind="stable")
    return order[:top_k], delta


def score_probes(case: Case, probes: Probes, config: ProbeConfig
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Query M and M_u on the probes; returns (predicted, delta by class, queries spent)."""
    if case.query_original is None or case.query_unlearned is None:
        raise AttackConfigError("label inference needs query access to both models")
    x = torch.as_tensor(probes.x)
    before = case.query_original.queries + case.query_unlearned.queries
    p0 = case.query_original(x).cpu().double().numpy()
    p1 = case.query_unlearned(x).cpu().double().numpy()
    if not (np.isfinite(p0).all() and np.isfinite(p1).all()):
        raise NonFiniteLossError("non-finite probabilities while scoring probes")
    spent = case.query_original.queries + case.query_unlearned.queries - before
    pred, delta = infer_label(p0, p1, case.metadata.num_classes, config.probes_per_class,
                              config.top_k, config.score)
    return pred, delta, spent


@ATTACKS.register("probing")
class ProbingLabelInference(Attack):
    """Label inference (Hu et al.): probes crafted against theta, confidence drop after."""

    name = "probing"
    Config = ProbeConfig
    scorer = "label_inference"

    def threat_model(self, config: ProbeConfig) -> ThreatModel:
        return ThreatModel(white_box=config.box == "white", knowledge="paper",
                           model_family="torch", forget_kind="class_share")

    def prepare(self, case: Case, config: ProbeConfig, seed: int) -> dict[str, np.ndarray]:
        """Probes crafted once against the original model, reused for every theta_u."""
        probes = craft_probes(case, config, seed)
        return {"wall_s": np.asarray(probes.wall_s), **probes.as_arrays()}

    def prepare_settings(self, config: ProbeConfig) -> dict:
        # The decision rule (score, top_k) does not change the probes.
        settings = dataclasses.asdict(config)
        for name in ("score", "top_k"):
            settings.pop(name)
        return settings

    def run(self, cases: Sequence[Case], config: ProbeConfig, *,
            seeds: Sequence[int] | None = None, callback=None,
            prepared: dict[str, np.ndarray] | None = None) -> LabelInferenceResult:
        """Craft probes per case (or use ``prepared``, crafted once per original) and score."""
        seeds = target_seeds(cases, seeds)
        shared = None
        if prepared is not None:
            shared = Probes.from_arrays(prepared, config.box, config.loss)
            shared.wall_s = float(prepared.get("wall_s", 0.0))
        preds, deltas, crafting, scoring, failed, n_probes = [], [], [], [], [], []
        for case, seed in zip(cases, seeds):
            pr = shared if shared is not None else craft_probes(case, config, seed)
            pred, delta, spent = score_probes(case, pr, config)
            preds.append(pred)
            deltas.append(delta)
            crafting.append(pr.total_queries)
            scoring.append(int(spent))
            failed.append(int((~pr.accepted).sum()))
            n_probes.append(len(pr.target))
            if callback is not None:
                callback(len(preds))
        crafting_q = np.asarray(crafting, dtype=np.int64)
        scoring_q = np.asarray(scoring, dtype=np.int64)
        return LabelInferenceResult(preds, deltas, crafting_q + scoring_q,
                                    np.asarray(failed, dtype=np.int64), crafting_q, scoring_q,
                                    np.asarray(n_probes, dtype=np.int64))
