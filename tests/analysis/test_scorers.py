"""The scoring layer: one copy of matching, baselines, PSNR capping and label accuracy."""

from __future__ import annotations

import numpy as np

from tasks.analysis import PSNR_CAP_DB, SCORERS, ScoringContext
from tasks.attacks.inversion import InversionConfig, RecoveryResult
from tasks.attacks.probing import LabelInferenceResult, ProbeConfig
from tasks.cases import GroundTruth


def _truth(x: np.ndarray, labels, rid="r") -> GroundTruth:
    return GroundTruth(rid, tuple(range(len(x))), x, np.asarray(labels))


def _recovery(images, labels) -> RecoveryResult:
    n = len(images)
    return RecoveryResult(images=images, labels=labels, matching_loss=np.zeros(n),
                          cosine=np.ones(n), restart_losses=[np.zeros(2)] * n,
                          best_restart=np.zeros(n, dtype=int), iterations=3, wall_s=0.0,
                          eval_model=["theta"] * n)


def test_an_exact_recovery_scores_the_cap_everywhere():
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 8, 8)).astype(np.float32)
    # Recovered in the other order: Hungarian matching pairs them back.
    result = _recovery([x[::-1].copy()], [np.array([1, 0])])
    scorer = SCORERS.get("image_recovery")()
    scored = scorer.score(result, [_truth(x, [0, 1])], InversionConfig(),
                          ScoringContext(num_classes=10, std=(0.3,), mean_image=x.mean(0)))
    rows = scored.rows[0]
    assert [r["psnr"] for r in rows] == [PSNR_CAP_DB, PSNR_CAP_DB]
    assert [r["psnr_ref"] for r in rows] == [PSNR_CAP_DB, PSNR_CAP_DB]
    assert scored.metrics["psnr"].tolist() == [PSNR_CAP_DB]
    assert all(r["label_used"] == r["true_label"] for r in rows)  # matched, labels follow
    assert all(np.isfinite(r["psnr_mean_image"]) and r["psnr_mean_image"] < 40 for r in rows)


def test_a_poor_recovery_scores_below_the_cap_and_the_gain_uses_the_baseline():
    x = np.full((1, 1, 8, 8), 0.25, dtype=np.float32)
    result = _recovery([np.full_like(x, 0.75)], [np.array([3])])
    scored = SCORERS.get("image_recovery")().score(
        result, [_truth(x, [3])], InversionConfig(),
        ScoringContext(num_classes=10, mean_image=np.full(x.shape[1:], 0.5)))
    assert abs(scored.rows[0][0]["psnr"] - 10 * np.log10(1 / 0.25)) < 1e-9  # MSE 0.25
    assert abs(scored.metrics["gain_db"][0] - (6.0206 - 12.0412)) < 1e-3  # vs MSE 0.0625


def test_label_inference_accuracy_needs_every_forgotten_class_in_the_top_k():
    result = LabelInferenceResult(predicted=[np.array([4, 2]), np.array([1, 0])],
                                  delta_by_class=[np.arange(10.0)] * 2,
                                  queries=np.array([5, 5]), probes_failed=np.array([0, 0]))
    truths = [GroundTruth("a", (0,), np.zeros((1, 1)), np.array([2]), forgotten_class=2,
                          share=0.5),
              GroundTruth("b", (1, 2), np.zeros((2, 1)), np.array([0, 3]))]
    scorer = SCORERS.get("label_inference")()
    top1 = scorer.score(result, truths, ProbeConfig(top_k=1), ScoringContext(num_classes=10))
    top2 = scorer.score(result, truths, ProbeConfig(top_k=2), ScoringContext(num_classes=10))
    assert top1.metrics["accuracy"].tolist() == [0.0, 0.0]
    assert top2.metrics["accuracy"].tolist() == [1.0, 0.0]  # class 3 of b is never guessed
    assert top2.rows[0][0]["p"] == 0.5 and top2.rows[0][0]["true_class"] == 2
