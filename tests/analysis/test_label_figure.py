from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from tasks.analysis.label_figure import draw_label_inference, records_from_arrays

matplotlib.use("Agg")


def _records(methods, shares, classes=4, boxes=("white",), scores=("prob",)):
    rng = np.random.default_rng(0)
    out = []
    for method in methods:
        for box in boxes:
            for score in scores:
                for share in shares:
                    for c in range(classes):
                        delta = rng.normal(0, 0.01, classes)
                        delta[c] -= share
                        out.append({"method": method, "box": box, "score": score,
                                    "share": share, "true_class": c, "delta": delta})
    return out


def _texts(fig):
    found = list(fig.findobj(matplotlib.text.Text))
    return [t for t in found if t.get_visible() and t.get_text()]


def test_every_share_is_drawn_in_every_panel():
    shares = (0.1, 0.5, 1.0)
    fig = draw_label_inference(_records(["retrain", "gradient_ascent"], shares))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    for ax in panels:
        drawn = [line for line in ax.lines if line.get_label().startswith("p=")]
        # One visible line per share given, each over every forgotten class.
        assert sorted(line.get_label() for line in drawn) == [f"p={s:g}" for s in shares]
        assert all(line.get_visible() and len(line.get_xdata()) == 4 for line in drawn)
        own = {line.get_label(): np.asarray(line.get_ydata()) for line in drawn}
        assert own["p=1"].mean() < own["p=0.5"].mean() < own["p=0.1"].mean()
    legend = fig.legends[0]
    assert {t.get_text() for t in legend.get_texts()} >= {f"p={s:g}" for s in shares}
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("methods", [["retrain"], ["a", "b", "c", "d", "e"]])
def test_the_figure_reads_at_page_width(methods):
    fig = draw_label_inference(_records(methods, (0.1, 0.25, 0.5, 0.75, 1.0),
                                        boxes=("white", "black"), scores=("prob", "logodds")))
    width, _height = fig.get_size_inches()
    assert width <= 8.0
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4 * len(methods)
    # Wrapped: never more than three panels side by side.
    assert len({round(ax.get_position().x0, 3) for ax in panels}) <= 3
    assert min(t.get_fontsize() for t in _texts(fig)) >= 7
    matplotlib.pyplot.close(fig)


def test_records_from_the_scorer_arrays():
    arrays = [{"delta": np.zeros((2, 3)), "label": np.asarray(["retrain / black-logodds",
                                                               "retrain / custom"]),
               "share": np.asarray([0.5, 1.0]), "true_class": np.asarray([1, 2])}]
    recs = records_from_arrays(arrays)
    assert [(r["method"], r["box"], r["score"], r["share"], r["true_class"]) for r in recs] == [
        ("retrain", "black", "logodds", 0.5, 1), ("retrain", "custom", "", 1.0, 2)]
    fig = draw_label_inference(recs)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
    matplotlib.pyplot.close(fig)


def test_requests_with_no_share_are_labelled_by_their_class_only():
    # A user's pair: its deletion requests have no class share (the scorer saves NaN).
    arrays = [{"delta": np.asarray([[-0.5, 0.1, 0.0], [0.0, -0.3, 0.1], [-0.1, 0.0, 0.0]]),
               "label": np.asarray(["your pair / black-prob"] * 3),
               "share": np.asarray([np.nan, np.nan, np.nan]),
               "true_class": np.asarray([0, 1, 0])}]
    fig = draw_label_inference(records_from_arrays(arrays))
    texts = [t.get_text() for t in _texts(fig)]
    assert not [t for t in texts if "nan" in t.lower() or t.startswith("p=")]
    (legend,) = fig.legends
    assert "deletion requests" in {t.get_text() for t in legend.get_texts()}
    (panel,) = [ax for ax in fig.axes if ax.get_visible()]
    # One line for all the requests (NaN shares are one key), over both forgotten classes;
    # class 0's two requests are averaged.
    (own,) = [line for line in panel.lines if line.get_label() == "deletion requests"]
    assert list(own.get_xdata()) == [0, 1]
    assert np.allclose(own.get_ydata(), [-0.3, -0.3])
    matplotlib.pyplot.close(fig)
