"""Every registered unlearning method subclasses the kit (:class:`UnlearningConformance`).

The kit checks capabilities, params, forget loss rising, determinism, that the original is left
alone, retraining from scratch, replacement records and ensembles, per model family; the SISA
class adds what only sharding has. ``test_coverage.py`` fails for a method without a subclass.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from tasks.params import build
from tasks.testing import UnlearningConformance, small_state
from tasks.unlearning import UNLEARNING, ForgetConfig, make_requests


class TestRetrain(UnlearningConformance):
    method = "retrain"


class TestRefit(UnlearningConformance):
    method = "refit"


class TestRetrainDP(UnlearningConformance):
    method = "retrain_dp"
    # Fresh noise (the default) is by design not theta's recipe replayed; shared noise is.
    from_scratch_params: ClassVar[dict] = {"noise": "shared"}


class TestGradientAscent(UnlearningConformance):
    method = "gradient_ascent"
    params: ClassVar[dict] = {"lr": 0.5}


class TestFinetune(UnlearningConformance):
    method = "finetune"
    params: ClassVar[dict] = {"epochs": 3}


class TestSisa(UnlearningConformance):
    method = "sisa"
    params: ClassVar[dict] = {"shards": 3}

    def test_changes_only_the_affected_shard(self):
        method, state, params = self.trained("torch")
        request = make_requests(ForgetConfig(kind="single", count=1), state.train_indices,
                                state.dataset.y_train, seed=1)[0]
        unlearned = method.unlearn(state, request, params)
        assert len(unlearned.retrained) == 1
        for s, (a, b) in enumerate(zip(state.original.shards, unlearned.shards)):
            assert self.same_weights(a, b) == (s not in unlearned.retrained)

    def test_aggregate_does_not_alias_shard_outputs(self):
        method = UNLEARNING.get("sisa")()
        ensemble = method.train_original(small_state("sklearn"), self.make_params())
        x = small_state("sklearn").dataset.x_test[:20]
        shard0 = ensemble.shards[0].proba(x).copy()
        agg1, agg2 = ensemble.proba(x), ensemble.proba(x)
        np.testing.assert_array_equal(agg1, agg2)  # no accumulation across calls
        np.testing.assert_array_equal(ensemble.shards[0].proba(x), shard0)
        np.testing.assert_allclose(agg1, np.mean([m.proba(x) for m in ensemble.shards], axis=0))

    def test_sliced_sisa_resumes_from_the_checkpoint_before_the_slice(self):
        params = build(UNLEARNING.get("sisa").Params, {"shards": 2, "slices": 3})
        method, state, params = self.trained("torch", params)
        assert len(state.original.checkpoints) == 6
        # A sample of shard 1's last slice: slices 0 and 1 of that shard never saw it.
        from tasks.unlearning import ForgetRequest
        from tasks.unlearning.sisa import shard_assignment

        plan = shard_assignment(state.train_indices, state.seed, 2, 3)
        sample = int(plan[1][2][0])
        started = []
        train_shard = method._train_shard

        def recording(st, shard_plan, shard, start_slice, *rest):
            started.append((shard, start_slice))
            return train_shard(st, shard_plan, shard, start_slice, *rest)

        method._train_shard = recording
        unlearned = method.unlearn(state, ForgetRequest("r-sliced", "single", (sample,)), params)
        del method._train_shard
        assert started == [(1, 2)] and unlearned.retrained == (1,)  # resumed at slice 2
        # Resuming equals training shard 1 from scratch without the sample, slice by slice.
        scratch = train_shard(state, plan[1], 1, 0, None, (sample,), {})
        assert self.same_weights(unlearned.shards[1], scratch)
        assert self.same_weights(unlearned.shards[0], state.original.shards[0])
