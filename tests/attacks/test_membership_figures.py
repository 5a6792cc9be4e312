from __future__ import annotations

import numpy as np

from orchestrator.reporting.membership_figures import roc_figure
from tasks.analysis.statistics import roc


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


def test_a_pairs_tables_redraw_as_your_pair_with_the_preregistered_curve_apart(
        tmp_path, monkeypatch):
    from orchestrator.reporting import membership_figures as figs
    from orchestrator.store.tables import Results

    common = {"experiment": "pair", "dataset": "digits", "model": "torch_export",
              "unlearning_method": "retrain", "scenario": "single", "feature": "direct_diff",
              "attack_model": "lr", "control": "none"}  # a shadow recipe's name in the rows
    keys = {"exploratory": "pair-mia-abc:direct_diff:lr:none",
            "preregistered": "pair-mia-abc:preregistered"}
    results = Results(str(tmp_path), "pair")
    results.write("membership_attacks", [{"key": key, **common, "test": test, "auc": 0.7}
                          for test, key in keys.items()])  # no generalisation gap
    results.write("membership_records", [
        {"key": f"{key}:{i}", "mia_key": key, **common, "test": test, "label": int(i < 2),
         "score": float(i % 3)} for test, key in keys.items() for i in range(6)])
    drawn = []
    monkeypatch.setattr(figs, "roc_figure",
                        lambda curves, title: drawn.append((sorted(curves), title))
                        or roc_figure(curves, title))
    written = figs.redraw_from_tables(str(tmp_path), "pair")
    assert [p.rsplit("/", 1)[-1] for p in written] == [
        "roc_digits_torch_export_your_pair_single_abc.png"]  # and no gain figure
    ((curves, title),) = drawn
    assert title == "digits / torch_export / your pair / single"
    assert curves == [("direct_diff", "lr"), ("direct_diff (pre-registered)", "lr")]
