"""Scoring of feature recovery: recovered images against the forgotten ones.

Per request, reconstructions are matched to the forgotten samples by Hungarian assignment on
MSE before scoring (k > 1), and every sample is compared with two attacker-side baselines: a
uniform random image (seeded) and the mean image of the attacker's public data.

PSNR of an exact recovery (MSE = 0) is +inf; every PSNR here (and so every table, search
trial and defence row) is capped at :data:`PSNR_CAP_DB`, so averages stay finite and an exact
recovery reads as the cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from tasks.analysis.base import SCORERS, ScoredBatch, Scorer, ScoringContext
from tasks.cases import GroundTruth
from tasks.metrics import image_scores, match_reconstructions, psnr

PSNR_CAP_DB = 100.0


def capped(values: np.ndarray) -> np.ndarray:
    return np.minimum(np.asarray(values, dtype=np.float64), PSNR_CAP_DB)


def matched_scores(images: np.ndarray, truth: GroundTruth, std=None) -> dict[str, Any]:
    """Hungarian-matched scores of one request: per forgotten sample j, ``slot[j]`` is the
    index into the score arrays (None when fewer reconstructions than samples)."""
    rec_idx, orig_idx = match_reconstructions(images, truth.x)
    scores = image_scores(images[rec_idx], truth.x[orig_idx], std)
    for name in ("psnr", "psnr_ref"):
        if name in scores:
            scores[name] = capped(scores[name])
    slot = dict(zip(orig_idx.tolist(), range(len(orig_idx))))
    return {"rec_idx": rec_idx, "orig_idx": orig_idx, "scores": scores, "slot": slot}


def _score_reader(scores: dict[str, np.ndarray], slot: int | None):
    """name -> that sample's score (None when the sample got no reconstruction)."""
    def at(name: str) -> float | None:
        if slot is None or name not in scores:
            return None
        return float(scores[name][slot])

    return at


@SCORERS.register("image_recovery")
class ImageRecoveryScorer(Scorer):
    table: ClassVar[str] = "recoveries"
    per_sample: ClassVar[bool] = True
    metrics: ClassVar[dict[str, str]] = {"psnr": "maximize", "ssim": "maximize",
                                         "gain_db": "maximize", "matching_loss": "minimize"}
    leakage: ClassVar[str] = "psnr"

    def score(self, result, truths: Sequence[GroundTruth], config, context: ScoringContext
              ) -> ScoredBatch:
        rng = np.random.default_rng([context.seed, 31])
        rows, originals, recovered = [], [], []
        psnr_t, ssim_t, gain_t = [], [], []
        out = result.per_target()
        for i, truth in enumerate(truths):
            images = np.asarray(out["images"][i])
            used = np.asarray(out["labels"][i])
            m = matched_scores(images, truth, context.std)
            scores, slot = m["scores"], m["slot"]
            base_random = capped(psnr(rng.random(truth.x.shape, dtype=np.float32), truth.x))
            base_mean = (capped(psnr(np.broadcast_to(context.mean_image, truth.x.shape),
                                     truth.x))
                         if context.mean_image is not None else np.full(len(truth.x), np.nan))
            case_rows = []
            for j, sample in enumerate(truth.indices):
                s = slot.get(j)
                at = _score_reader(scores, s)

                case_rows.append({
                    "sample_index": int(sample), "k": len(truth.indices),
                    "true_label": int(truth.y[j]),
                    "label_used": int(used[m["rec_idx"][s]]) if s is not None else None,
                    "mse": at("mse"), "psnr": at("psnr"), "psnr_ref": at("psnr_ref"),
                    "ssim": at("ssim"), "psnr_random": float(base_random[j]),
                    "psnr_mean_image": float(base_mean[j]),
                    "baseline_mean_source": context.mean_source,
                    "cos_final": float(out["cosine"][i]),
                    "matching_loss": float(out["matching_loss"][i]),
                    "restart_losses": [float(v) for v in out["restart_losses"][i]],
                    "iterations": int(getattr(result, "iterations", 0)),
                    "eval_model": (result.eval_model[i] if getattr(result, "eval_model", None)
                                   else None),
                    "psnr_capped_at": PSNR_CAP_DB,
                })
            rows.append(case_rows)
            psnr_t.append(float(np.mean(scores["psnr"])))
            ssim_t.append(float(np.mean(scores["ssim"])))
            gain_t.append(float(np.mean(scores["psnr"]) - np.nanmean(base_mean)))
            originals.append(truth.x[m["orig_idx"]])
            recovered.append(images[m["rec_idx"]])
        arrays = {
            "original": np.concatenate(originals), "recovered": np.concatenate(recovered),
            "psnr": np.asarray([np.nan if r["psnr"] is None else r["psnr"]
                                for case in rows for r in case]),
        }
        return ScoredBatch(rows, {"psnr": np.asarray(psnr_t), "ssim": np.asarray(ssim_t),
                                  "gain_db": np.asarray(gain_t),
                                  "matching_loss": np.asarray(out["matching_loss"],
                                                              dtype=np.float64)}, arrays)

    def figure(self, arrays, title):
        from tasks.analysis.figures import recovery_figure

        return recovery_figure(arrays, title)
