from __future__ import annotations

import numpy as np

from orchestrator.membership_figures import roc_figure
from tasks.metrics_membership import roc


def test_roc_figure_is_log_log_with_a_true_chance_diagonal():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    curves = {}
    for feature, shift in (("basic_mia", 0.3), ("direct_diff", 1.0)):
        for model in ("dt", "lr"):
            curves[(feature, model)] = roc(labels, rng.normal(labels * shift, 1.0))
    fig = roc_figure(curves, "test")
    axes = [ax for ax in fig.axes if ax.lines]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        lo, hi = ax.get_xlim()
        assert 1e-4 <= lo <= 1e-3 and hi == 1
        assert 1e-4 <= ax.get_ylim()[0] <= 1e-3 and ax.get_ylim()[1] >= 1
        (chance,) = [line for line in ax.lines if line.get_label() == "chance"]
        x, y = np.asarray(chance.get_xdata()), np.asarray(chance.get_ydata())
        # Many points from the floor to 1, so the line is y = x all along on log axes.
        assert len(x) >= 50 and np.array_equal(x, y)
        assert x.min() <= lo * 1.01 and x.max() == 1
        # Each feature is drawn, none falls off the log axes at FPR or TPR 0.
        curves_drawn = [line for line in ax.lines if line.get_label() != "chance"]
        assert len(curves_drawn) == 2
        for line in curves_drawn:
            assert (np.asarray(line.get_xdata()) >= lo).all()
            assert (np.asarray(line.get_ydata()) >= ax.get_ylim()[0]).all()
    import matplotlib.pyplot as plt

    plt.close(fig)
