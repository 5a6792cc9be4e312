"""Conformance of the NegGrad+, random relabelling, l1-sparse and SalUn plug-ins."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
import torch

from tasks.params import ParamError
from tasks.testing import UnlearningConformance
from tasks.unlearning.random_label import wrong_labels


class TestNegGradPlus(UnlearningConformance):
    method = "neggrad_plus"

    def test_alpha_is_an_open_fraction(self) -> None:
        for alpha in (0.0, 1.0, 1.5):
            with pytest.raises(ParamError, match="alpha"):
                self.make_params(alpha=alpha)


class TestRandomLabel(UnlearningConformance):
    method = "random_label"

    def test_wrong_labels_are_never_the_true_one(self) -> None:
        y = np.arange(2000) % 10
        drawn = wrong_labels(y, 10, np.random.default_rng(0))
        assert not np.any(drawn == y)
        assert set(drawn.tolist()) == set(range(10))  # every class is reachable


class TestL1Sparse(UnlearningConformance):
    method = "l1_sparse"
    # l1-sparse is fine-tuning plus a small penalty: one epoch on the kit's 271 retained
    # records is nine steps, which lift the forget loss only ~1.1x (0.0123 -> 0.0140); three
    # epochs, as TestFinetune uses, give ~3.3x.
    params: ClassVar[dict] = {"epochs": 3}

    def test_l1_cannot_be_negative(self) -> None:
        with pytest.raises(ParamError, match="l1"):
            self.make_params(l1=-1e-4)

    def test_the_penalty_shrinks_the_weights(self) -> None:
        method, state, _ = self.trained("torch")
        request = self.class_request(state)

        def l1_norm(**extra) -> float:
            model = method.unlearn(state, request, self.make_params(**extra))
            return float(sum(p.detach().abs().sum() for p in model.parameters()))

        assert l1_norm(l1=1e-2) < l1_norm(l1=0.0)


class TestSalUn(UnlearningConformance):
    method = "salun"

    def test_saliency_share_is_a_fraction(self) -> None:
        for share in (0.0, 1.5):
            with pytest.raises(ParamError, match="saliency_share"):
                self.make_params(saliency_share=share)

    def test_only_salient_weights_move(self) -> None:
        # Weight decay and momentum must not move the frozen weights either.
        method, state, _ = self.trained("torch")
        state = dataclasses.replace(
            state, train_cfg=dataclasses.replace(state.train_cfg, weight_decay=1e-3))
        request = self.class_request(state)
        params = self.make_params(saliency_share=0.2)
        masks = method.mask(state, request, params)
        total = sum(m.numel() for m in masks.values())
        chosen = sum(int(m.sum()) for m in masks.values())
        assert chosen == int(np.ceil(0.2 * total))
        unlearned = method.unlearn(state, request, params)
        before = dict(state.original.named_parameters())
        moved = 0
        for name, after in unlearned.named_parameters():
            frozen = masks[name] == 0
            assert torch.equal(after[frozen], before[name][frozen]), name
            moved += int((after != before[name]).sum())
        assert moved > 0
