"""Analysis: the one place where attack guesses meet the ground truth (:data:`SCORERS`).

Registered scorers: ``image_recovery`` (feature recovery, :mod:`tasks.analysis.images`),
``label_inference`` (:mod:`tasks.analysis.labels`) and ``membership`` (membership inference
against unlearning, :mod:`tasks.analysis.membership`).
"""

from __future__ import annotations

from tasks.analysis import images as _images  # noqa: F401  (registers image_recovery)
from tasks.analysis import labels as _labels  # noqa: F401  (registers label_inference)
from tasks.analysis import membership as _membership  # noqa: F401  (registers membership)
from tasks.analysis.base import SCORERS, ScoredBatch, Scorer, ScoringContext, scorer_for
from tasks.analysis.images import PSNR_CAP_DB
from tasks.analysis.membership import membership_metrics

__all__ = ["PSNR_CAP_DB", "SCORERS", "ScoredBatch", "Scorer", "ScoringContext",
           "membership_metrics", "scorer_for"]
