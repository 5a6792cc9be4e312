"""``unlearn-audit report``: one self-contained HTML page with verdicts, intervals and figures.

A reduced quickstart runs inline (no Ray, a few seconds) to give real tables and figures; the
page is checked as text, then opened in a real headless browser (Debian's
chromium-headless-shell, installed here when missing) for console errors and a blank render.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli.main import main
from orchestrator.reporting import verdicts as vd


@pytest.fixture(scope="module")
def results_dir(quickstart_results) -> Path:
    return quickstart_results


@pytest.fixture(scope="module")
def page(results_dir) -> Path:
    assert main(["report", str(results_dir / "qs")]) == 0
    path = results_dir / "qs" / "report.html"
    assert path.is_file()
    return path


# --- the page as text -------------------------------------------------------------------------

NUM = r"[+-]?\d+\.\d+"


def test_report_holds_verdicts_with_numbers_and_intervals(page):
    text = page.read_text()
    # Feature recovery: gain over the mean image, its interval, what 0 dB means.
    recovery = re.findall(rf"({NUM}) \[({NUM}), ({NUM})\] dB over the mean image \(95 % "
                          r"bootstrap interval over (\d+) targets\)", text)
    assert len(recovery) == 5, recovery  # 2 reference + 3 paper-inferred (method, config)
    for mean, low, high, n in recovery:
        assert float(low) <= float(mean) <= float(high) and int(n) == 2
    assert "0 dB means no better than the attacker&#x27;s public mean image" in text
    # Label inference: accuracy [CI] vs chance 1/C.
    label = re.findall(rf"accuracy ({NUM}) \[({NUM}), ({NUM})\] \(95 % bootstrap interval over "
                       r"(\d+) deletion requests\); chance is 0\.10", text)
    assert len(label) == 8, label  # 2 methods x 4 (box, score) configurations
    # Several unlearning methods: a ranking with test accuracy.
    assert "Unlearning methods ranked" in text and "test accuracy" in text
    # Provenance: versions, seeds, wall time, spec.
    for name in ("torch", "ray", "optuna", "numpy", "pyarrow", "scikit-learn"):
        assert f"<td class='l'>{name}</td>" in text
    assert "Seeds: 0." in text and re.search(r"Wall time \(sum of wall_s over all rows\): "
                                             rf"{NUM} s", text)
    assert "training.epochs" in text and "attacks.reference.config.iterations" in text


def test_report_is_self_contained(page):
    text = page.read_text()
    images = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 2  # the recovery and the label-inference figures
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text and "@import" not in text and "url(" not in text


def test_report_escapes_table_text_and_summarises_plugin_tables(tmp_path):
    from orchestrator.store.tables import Results

    results = Results(tmp_path, "exp")
    results.write("toy_attack", [
        {"key": f"r{i}", "attack": "toy", "attack_config": "<script>alert(1)</script>",
         "unlearning_method": "m&m", "score": float(i), "seed": 0} for i in range(6)])
    out = tmp_path / "page.html"
    assert main(["report", str(tmp_path / "exp"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "m&amp;m" in text
    # The plug-in table's numeric column: mean [interval over rows].
    assert re.search(r"2\.5 \[\d\.?\d*, \d\.?\d*\]", text), text


def test_report_refuses_what_is_not_an_experiment(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("unlearn-audit: ") for line in err), err
    assert not list(tmp_path.rglob("*.html"))


# --- the bootstrap and the verdicts -----------------------------------------------------------

def test_auc_and_membership_verdict_bootstrap_over_records():
    labels = np.r_[np.ones(50), np.zeros(50)]
    scores = np.r_[np.linspace(0.5, 1.0, 50), np.linspace(0.0, 0.6, 50)]
    mia = pd.DataFrame({"key": ["a"], "auc": [0.97], "unlearning_method": ["retrain"],
                        "scenario": ["in_out"], "feature": ["diff"], "attack_model": ["lr"],
                        "control": ["none"]})
    records = pd.DataFrame({"mia_key": "a", "label": labels, "score": scores})
    (v,) = vd.mia_verdicts(mia, records)
    assert v.sentence.startswith("deleted records are identifiable: AUC 0.98 [")
    assert "50 deleted and 50 never-used records' scores resampled separately" in v.sentence
    assert "chance is 0.50" in v.sentence
    assert v.low < v.value < v.high
    (w,) = vd.mia_verdicts(mia.assign(auc=0.5))  # no records, one AUC row: no interval
    assert w.sentence.startswith(vd.SINGLE) and "1 AUC rows" in w.sentence
    assert "too few for an interval" in w.sentence


def test_defence_verdicts_give_leakage_and_utility():
    df = pd.DataFrame({"key": list("abcd"), "attack": "inversion",
                       "unlearning_method": "gradient_ascent", "defence": "pruning",
                       "strength": [0.1, 0.1, 0.9, 0.9], "attack_metric": [10., 12., 1., 2.],
                       "test_acc_unlearned": [0.9, 0.9, 0.6, 0.6]})
    weak, strong = vd.defence_verdicts(df)
    assert weak.value == 11.0 and strong.value == 1.5
    assert "test accuracy 0.600" in strong.sentence and "pruning 0.9" in strong.sentence


# --- a real browser ---------------------------------------------------------------------------

def _browser() -> str | None:
    for name in ("chromium-headless-shell", "chromium"):
        if shutil.which(name):
            return shutil.which(name)
    for path in ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/chromium"):
        if Path(path).is_file():
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> str:
    found = _browser()
    if found is None and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "chromium-headless-shell"]
        done = subprocess.run(install, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600,
                           check=False)
            done = subprocess.run(install, capture_output=True, text=True, timeout=600,
                                  check=False)
        found = _browser()
        if found is None:
            lines = (done.stderr or done.stdout).strip().splitlines()
            pytest.skip(f"chromium-headless-shell cannot be installed: "
                        f"{lines[-1] if lines else 'apt-get failed'}")
    if found is None:
        pytest.skip("no chromium or chromium-headless-shell, and no apt-get to install it")
    return found


def _open(browser: str, page: Path, shot: Path) -> tuple[list[str], np.ndarray]:
    """Console errors the page raised and its screenshot as an array."""
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--screenshot={shot}", "--window-size=1200,2000",
                           "--enable-logging=stderr", "--v=0", page.as_uri()],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines()
              if "Uncaught" in line or "ERROR:CONSOLE" in line
              or ("CONSOLE" in line and "Failed to load resource" in line)]
    import matplotlib.image

    return errors, matplotlib.image.imread(str(shot))


def test_the_page_loads_in_a_real_browser_without_errors_and_is_not_blank(browser, page,
                                                                           tmp_path):
    errors, pixels = _open(browser, page, tmp_path / "shot.png")
    assert not errors, errors
    assert pixels.shape[:2] == (2000, 1200) and float(pixels[..., :3].var()) > 1e-3
    # The checks can fail: a page with a script error and a blank page are caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>throw new Error('boom')</script></body></html>")
    errors, _ = _open(browser, bad, tmp_path / "bad.png")
    assert errors and "boom" in errors[0]
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    _, pixels = _open(browser, blank, tmp_path / "blank.png")
    assert float(pixels[..., :3].var()) <= 1e-3


def test_report_out_a_folder_or_nowhere(tmp_path, capsys):
    """``--out`` naming a folder writes <folder>/<experiment>.html; one under a missing folder
    is refused in one line before the page is rendered, and leaves nothing behind."""
    from orchestrator.store.tables import Results

    Results(tmp_path, "exp").write("toy_attack", [{"key": "r0", "score": 1.0, "seed": 0}])
    pages = tmp_path / "pages"
    pages.mkdir()
    assert main(["report", str(tmp_path / "exp"), "--out", str(pages)]) == 0
    assert [p.name for p in pages.iterdir()] == ["exp.html"]
    capsys.readouterr()
    assert main(["report", str(tmp_path / "exp"), "--out",
                 str(tmp_path / "nowhere" / "page.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "no folder" in err[0]
    assert not (tmp_path / "nowhere").exists()


def test_budget_sentences_say_what_a_number_of_shadow_models_buys():
    from orchestrator.reporting.html_report import budget_sentences

    def rows(method, attack, tprs):
        return [{"unlearning_method": method, "attack": attack, "shadow_models": m,
                 "tpr_at_1pct": t, "seed": 0, "config_hash": "h"}
                for m, t in zip((4, 8, 16, 32), tprs)]

    board = pd.DataFrame(rows("gradient_ascent", "ulira_online", (0.05, 0.10, 0.17, 0.20))
                         + rows("gradient_ascent", "chen_direct_diff", (0.02, 0.04, 0.05, 0.06))
                         + rows("retrain", "ulira_online", (0.012, 0.009, 0.01, 0.008)))
    leak, null = budget_sentences(board)
    assert leak == ("gradient_ascent: U-LiRA (online) with 32 shadow models a record finds TPR "
                    "0.200; chen_direct_diff at most 30% (with 32); ulira_online finds 85% "
                    "of it with 16.")
    assert null.startswith("retrain: U-LiRA (online) with 32 shadow models a record finds "
                           "nothing above chance")
    # A point above 1 % whose interval reaches it is no leak either.
    board["tpr_at_1pct_low"] = board["tpr_at_1pct"] - 0.005
    board.loc[board["unlearning_method"] == "retrain", "tpr_at_1pct"] = 0.0104
    assert "nothing above chance" in budget_sentences(board)[1]
    assert budget_sentences(None) == [] and budget_sentences(pd.DataFrame()) == []
