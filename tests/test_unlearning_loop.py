"""The fine-tuning unlearning methods as losses over ``train_model``: their outputs are pinned.

The numbers were taken with the hand-written loops these methods had before they became loss
hooks; the loss-hook versions reproduce them bit for bit on CPU (issue 27, item 4). A change
of seed, order, optimiser or loss moves them by far more than the tolerance.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from tasks.testing.states import small_state
from tasks.training import PINNED_SEED_KEYS, predict_logits
from tasks.unlearning import UNLEARNING, ForgetConfig, fit_standard, make_requests

# method: (params, logits of x_test[:2] on classes 0-3, sum |theta_u|)
PINNED = {
    "l1_sparse": ({"epochs": 3}, [[1.4855, 5.3149, 9.5076, -4.3987],
                                  [-0.7666, 1.8689, 7.7018, -0.2069]], 285.52179),
    "neggrad_plus": ({}, [[1.6689, 4.3494, 9.0434, -4.3403],
                          [-0.6139, 1.2163, 7.4706, -0.1206]], 289.53168),
    "scrub": ({"batch_size": 16, "epochs": 4, "max_steps": 3},
              [[3.9448, 2.0575, 11.5407, -3.3593], [-0.5990, -0.5369, 5.8471, -0.6256]],
              821.16864),
    "random_label": ({}, [[3.2637, 5.7832, 8.7730, -11.3163],
                          [1.2070, 3.4940, 7.5636, -9.0421]], 282.27182),
    "bad_teacher": ({}, [[2.7435, 7.1109, 9.2992, -10.5155],
                         [0.9693, 4.1621, 7.7761, -7.9311]], 283.16449),
    # Taken with their SEED_OFFSET constants, before their seeds came from the SeedStream.
    "finetune": ({}, [[1.6458, 4.5065, 9.1887, -4.0709],
                      [-0.6622, 1.4315, 7.5504, 0.2702]], 289.61731),
    "salun": ({}, [[3.1843, 5.0287, 8.3008, -12.5059],
                   [0.8197, 2.7157, 6.5387, -10.0682]], 283.18793),
}


@functools.lru_cache(maxsize=1)
def _state():
    state = small_state("torch")
    state.original = fit_standard(state)
    request = make_requests(ForgetConfig(kind="class_share", classes=(3,), shares=(1.0,)),
                            state.train_indices, state.dataset.y_train, seed=0)[0]
    return state, request


@pytest.mark.parametrize("method", sorted(PINNED))
def test_outputs_are_pinned(method: str) -> None:
    params, logits, l1 = PINNED[method]
    cls = UNLEARNING.get(method)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the original too: its sums' order follows the thread count
    try:
        state, request = _state()
        model = cls().unlearn(state, request, cls.Params(**params))
    finally:
        torch.set_num_threads(before)
    got = predict_logits(model, state.dataset.x_test[:2])[:, :4]
    np.testing.assert_allclose(got, logits, atol=2e-3)
    norm = float(sum(p.detach().abs().sum() for p in model.parameters()))
    assert norm == pytest.approx(l1, rel=1e-5)


def test_pinned_seed_keys_are_the_published_offsets() -> None:
    # Changing one of these changes every model of its method (and its cached artifacts).
    assert PINNED_SEED_KEYS == {
        "finetune": 1_000_003, "scrub/retain": 2_000_003, "scrub/forget": 2_000_004,
        "bad_teacher/teacher": 3_000_017, "bad_teacher/sample": 3_000_019,
        "random_label": 4_000_037, "salun": 5_000_011, "neggrad_plus/retain": 6_000_011,
        "neggrad_plus/forget": 6_000_012, "l1_sparse": 7_000_003}
