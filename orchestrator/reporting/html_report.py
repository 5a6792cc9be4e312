"""``unlearn-audit report``: one self-contained HTML file a reviewer reads without the tool.

Verdicts in plain words with bootstrap intervals (orchestrator/reporting/verdicts.py), the figures the run
wrote (embedded as base64 PNG), a compact table per attack, a ranking of unlearning methods, the
spec, seeds, package versions and wall time. Nothing is fetched from a network: no external
CSS, scripts or fonts, so the page reads the same offline and in an archive years later.
Every text that comes from a table is escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import json
import os

import pandas as pd

import orchestrator.reporting.summaries  # noqa: F401  (the built-in tables' summaries)
from orchestrator.reporting import verdicts as vd
from orchestrator.reporting.membership_figures import ATTACKS, RECORDS
from orchestrator.reporting.show import TABLE_SUMMARIES, attack_table
from orchestrator.store.tables import FIGURE_INDEX, FIGURES_DIR, Results
from tasks.analysis.statistics import RESAMPLES, SEED

PACKAGES = ("unlearn-audit", "torch", "ray", "optuna", "numpy", "pyarrow", "scikit-learn")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
 max-width:1100px;padding:0 1em;color:#1b1b1b;background:#fff;line-height:1.45}
h1{border-bottom:2px solid #333;padding-bottom:.2em}
h2{margin-top:1.8em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f0f0f0}td.l,th.l{text-align:left}
td.l{max-width:36em;overflow-wrap:anywhere}
.verdict{margin:.4em 0;padding:.5em .8em;border-left:5px solid #888;background:#f7f7f7}
.verdict.leak{border-color:#c0392b;background:#fdf1ef}
.verdict.ok{border-color:#27ae60;background:#eff9f2}
.tag{font-weight:600}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
.small{font-size:.85em;color:#555}.bad{border-left:5px solid #c0392b;padding:.4em .8em;
 background:#fdf1ef}.wide{overflow-x:auto;max-width:100%}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _frame_html(df: pd.DataFrame, max_rows: int = 40) -> str:
    """A frame as an escaped HTML table (index included when it carries names)."""
    if df is None or df.empty:
        return "<p class='small'>(empty)</p>"
    frame = df.reset_index() if any(n is not None for n in df.index.names) else df
    frame = frame.head(max_rows)
    head = "".join(f"<th class='l'>{_e(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            cls = "" if isinstance(v, (int, float)) and not isinstance(v, bool) else " class='l'"
            cells.append(f"<td{cls}>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = (f"<p class='small'>first {max_rows} of {len(df)} rows</p>"
            if len(df) > max_rows else "")
    # A wide table scrolls in its own box instead of widening the page.
    return f"<div class='wide'><table><tr>{head}</tr>{''.join(body)}</table></div>{more}"


def _verdict_html(v: vd.Verdict) -> str:
    leaks = v.sentence.split(":", 1)[0]
    cls = ("ok" if leaks.startswith(("no clear", "no evidence")) or "not recovered" in leaks
           else "leak")
    # No colour where there is no verdict: one sample, a design that cannot show a leak, a
    # defence's measurement.
    if v.attack == "defence" or leaks in (vd.SINGLE, "no pre-registered test, so no verdict") \
            or leaks.startswith("this design cannot"):
        cls = ""
    return (f"<div class='verdict {cls}'><span class='tag'>{_e(v.attack)} — "
            f"{_e(v.method)}, {_e(v.config)}:</span> {_e(v.sentence)}</div>")


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _figures(results: Results) -> list[tuple[str, str]]:
    """(name, data URI) of every PNG under RESULTS/<experiment>/figures/."""
    loc, out = results.location, []
    for path in loc.list_files(results.experiment, FIGURES_DIR, suffix=".png"):
        with loc.fs.open_input_file(path) as fh:
            data = fh.read()
        out.append((path.rsplit("/", 1)[-1],
                    "data:image/png;base64," + base64.b64encode(data).decode("ascii")))
    return out


def _spec(frames: dict[str, pd.DataFrame]) -> dict[str, str]:
    """The ``cfg.*`` columns of the rows: one value, or every distinct value of a grid."""
    values: dict[str, set[str]] = {}
    for df in frames.values():
        for col in (c for c in df.columns if c.startswith("cfg.")):
            values.setdefault(col[4:], set()).update(str(v) for v in df[col].dropna().unique())
    return {k: " | ".join(sorted(v)) for k, v in sorted(values.items())}


def _read_all(results: Results) -> tuple[dict[str, pd.DataFrame], list[str]]:
    frames, problems = {}, []
    for name in results.tables():
        try:
            frames[name] = results.read(name)
        except Exception as err:  # noqa: BLE001  (a damaged table must not hide the rest)
            problems.append(f"{name}: unreadable ({type(err).__name__}: {err})")
    return frames, problems


def _plugin(name: str) -> bool:
    """A plug-in attack's table: one whose writer registered no summary of its own (every
    built-in table has one, in :mod:`orchestrator.reporting.summaries` or its stage's)."""
    return name not in TABLE_SUMMARIES and name != FIGURE_INDEX


def _attack_tables(frames: dict[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for name, df in frames.items():
        if df.empty or name in ("figure_index", "prepared"):
            continue
        fn = TABLE_SUMMARIES.get(name)
        plugin = _plugin(name) and {
            "attack", "attack_config", "unlearning_method"} <= set(df.columns)
        try:
            if plugin:
                body = vd.plugin_summary(df)
            elif fn is not None:
                body = fn(df)
            elif {"attack", "attack_config", "unlearning_method"} <= set(df.columns):
                body = attack_table(df)
            else:
                body = df[[c for c in df.columns if not c.startswith("cfg.")][:12]].head(8)
        except Exception as err:  # noqa: BLE001  (summaries are display only)
            body = pd.DataFrame({"no summary": [f"{type(err).__name__}: {err}"]})
        out.append((name, body))
    return out


def collect_verdicts(frames: dict[str, pd.DataFrame]) -> list[vd.Verdict]:
    found: list[vd.Verdict] = []
    if "recoveries" in frames:
        found += vd.recovery_verdicts(frames["recoveries"])
    if "label_inference" in frames:
        found += vd.label_verdicts(frames["label_inference"])
    if ATTACKS in frames:
        found += vd.mia_verdicts(frames[ATTACKS], frames.get(RECORDS))
    if "defences" in frames:
        found += vd.defence_verdicts(frames["defences"])
    return found


def render(results: Results) -> str:
    """The whole page, as text."""
    frames, problems = _read_all(results)
    verdicts = collect_verdicts(frames)
    exp = _e(results.experiment)
    parts = [(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>unlearn-audit report: {exp}</title><style>{CSS}</style></head><body>"),
             f"<h1>Unlearning audit: {exp}</h1>",
             (f"<p class='small'>Results: {_e(results.location.uri)}/{exp} — written "
             f"{_e(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}"
             f" by unlearn-audit report. Intervals: 95 % percentile bootstrap, "
             f"{RESAMPLES} resamples, seed {SEED}.</p>")]
    parts.append("<h2>Verdicts</h2>")
    parts += _calibration_html(frames.get("leaderboard"))
    if verdicts:
        by_attack: dict[str, list[vd.Verdict]] = {}
        for v in verdicts:
            by_attack.setdefault(v.attack, []).append(v)
        for attack, items in by_attack.items():
            parts.append(f"<h3>{_e(attack.capitalize())}</h3>")
            parts += [_verdict_html(v) for v in items]
            note = (vd.exploratory_note(frames.get(ATTACKS))
                    if attack == "membership inference" else None)
            if note:
                parts.append(f"<p class='small'>{_e(note)}</p>")
    elif {"guesses", "membership_ranking"} & set(frames):
        parts.append("<p>The forget set is unknown (<code>pair.forget: unknown</code>): the "
                     "attacks' guesses are below — recovered inputs, inferred classes, the "
                     "training records ranked by membership score — and nothing is scored. "
                     "Name the deleted records to get verdicts.</p>")
    else:
        parts.append("<p>No attack table with a verdict (recoveries, label_inference, membership_attacks, "
                     "defences) in these results.</p>")
    plugins = [(n, df) for n, df in frames.items() if _plugin(n) and not df.empty
               and {"attack", "attack_config", "unlearning_method"} <= set(df.columns)]
    for name, _ in plugins:
        parts.append(f"<p>Plug-in attack table <b>{_e(name)}</b>: the mean of each numeric "
                     f"column with its 95 % bootstrap interval over rows is in its table "
                     f"below.</p>")
    board = frames.get("leaderboard", pd.DataFrame())
    # One ranking: where the per-example leaderboard exists, it is the ranking.
    rank = vd.ranking(frames.get("models"), verdicts) if board.empty else None
    if rank is not None:
        parts.append("<h2>Unlearning methods ranked</h2><p>Lower leakage first (mean rank over "
                     "the attacks measured: recovery gain in dB, label-inference accuracy, "
                     "membership AUC), ties broken by higher test accuracy of the unlearned "
                     "models.</p>" + _frame_html(rank))
    if not frames.get("leaderboard", pd.DataFrame()).empty:
        parts.append(_leaderboard_html(frames["leaderboard"]))
    sentences = budget_sentences(frames.get("budget"))
    if sentences:
        parts.append("<h2>What a shadow budget buys</h2><p class='small'>TPR at 1 % FPR on "
                     "the same target models, each attack fitted on a growing number of "
                     "shadow models (table <code>budget</code>, figure "
                     "<code>per_example_budget</code>).</p><ul>"
                     + "".join(f"<li>{_e(t)}</li>" for t in sentences) + "</ul>")
    figures = _figures(results)
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, uri in figures:
            parts.append(f"<figure><img src='{uri}' alt='{_e(name)}'>"
                         f"<figcaption>{_e(name)}</figcaption></figure>")
    parts.append("<h2>Tables</h2>")
    for name, body in _attack_tables(frames):
        parts.append(f"<h3>{_e(name)} ({len(frames[name])} rows)</h3>" + _frame_html(body))
    if problems:
        parts.append("<h2>Problems</h2><ul>" +
                     "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")
    parts.append(_provenance(frames))
    parts.append("</body></html>")
    return "\n".join(parts)


LEADERBOARD_COLUMNS = {
    "rank": "rank", "unlearning_method": "method", "reading": "reads as",
    "ulira_auc": "U-LiRA AUC", "ulira_auc_low": "low", "ulira_auc_high": "high",
    "distance_from_retrain": "distance from retrain", "records_leaking": "records named",
    "ulira_epsilon_lb": "eps lower bound (95 %)", "ulira_tpr_at_1pct": "TPR@1%FPR",
    "median_epsilon": "median eps", "forget_score": "forget score",
    "chen_auc_vs_retrain": "Chen AUC vs retrain",
    "unlearned_test_acc": "test acc", "unlearned_retain_acc": "retain acc",
    "forget_acc": "forget acc", "recovery_gain_db": "recovery gain dB",
    "recovery_gain_db_low": "gain low", "recovery_gain_db_high": "gain high",
    "recovery_gain_db_vs_retrain": "gain vs retrain", "label_inference_acc": "label inf. acc",
    "label_inference_acc_vs_retrain": "label acc vs retrain",
    "wall_vs_retrain": "time vs retrain", "method_params": "settings"}
IMAGE_COLUMNS = ("recovery_gain_db", "recovery_gain_db_low", "recovery_gain_db_high",
                 "recovery_gain_db_vs_retrain", "label_inference_acc",
                 "label_inference_acc_vs_retrain")


def _calibration_html(board: pd.DataFrame | None) -> list[str]:
    """The per-example null control, stated before any method's verdict."""
    if board is None or board.empty or "calibration" not in board.columns:
        return []
    out = []
    for _, row in board[board["calibration"].notna()].sort_values("seed").iterrows():
        text = str(row["calibration"])
        where = (f"U-LiRA AUC {row['ulira_auc']:.3f} against {row['null_auc']:.3f} for a "
                 f"perfect unlearner at this design (95 % of permutations in "
                 f"[{row['null_auc_low']:.3f}, {row['null_auc_high']:.3f}], permutation "
                 f"p = {row['null_auc_p']:.2f}); median epsilon {row['median_epsilon']:.2f} "
                 f"against {row['null_median_epsilon']:.2f} (p = "
                 f"{row['null_median_epsilon_p']:.2f}); permutations of which of this run's "
                 f"{int(row['n_models'])} models unlearned which of its "
                 f"{int(row['n_records'])} records")
        cls = "bad" if text.startswith("not") else "small"
        out.append(f"<p class='{cls}'><b>Null control (seed {_e(row['seed'])}, "
                   f"{_e(row['unlearning_method'])}):</b> {_e(text)} ({_e(where)})."
                   + (" Read no method's per-example verdict from this run." if cls == "bad"
                      else "") + "</p>")
    return out


def budget_sentences(df: pd.DataFrame | None, share: float = 0.8) -> list[str]:
    """Per method (first seed and design): how many shadow models each attack needs to find
    ``share`` of what online U-LiRA finds with the most (TPR at 1 % FPR)."""
    if df is None or df.empty or "shadow_models" not in df:
        return []
    out = []
    first = df[(df["seed"] == df["seed"].min()) & (df["config_hash"] == df["config_hash"].iloc[0])]
    for method, rows in first.groupby("unlearning_method", sort=False):
        online = rows[rows["attack"] == "ulira_online"].sort_values("shadow_models")
        if online.empty:
            continue
        ref = online.iloc[-1]
        most, best = int(ref["shadow_models"]), float(ref["tpr_at_1pct"])
        # Above chance only when the interval is (the point where no interval was kept).
        low = float(ref.get("tpr_at_1pct_low", best))
        if not low > 0.01:
            out.append(f"{method}: U-LiRA (online) with {most} shadow models a record finds "
                       f"nothing above chance at 1 % FPR (TPR {best:.3f}, its interval "
                       f"reaching {low:.3f}); no budget compares.")
            continue
        parts = []
        for attack, own in rows.groupby("attack", sort=True):
            own = own.sort_values("shadow_models")
            reached = own[own["tpr_at_1pct"] >= share * best]
            if len(reached):
                r = reached.iloc[0]
                parts.append(f"{attack} finds {r['tpr_at_1pct'] / best:.0%} of it with "
                             f"{int(r['shadow_models'])}")
            else:
                r = own.loc[own["tpr_at_1pct"].idxmax()]
                parts.append(f"{attack} at most {r['tpr_at_1pct'] / best:.0%} "
                             f"(with {int(r['shadow_models'])})")
        out.append(f"{method}: U-LiRA (online) with {most} shadow models a record finds TPR "
                   f"{best:.3f}; " + "; ".join(parts) + ".")
    return out


def _leaderboard_html(df: pd.DataFrame) -> str:
    """The per_example stage's ranking: distance from retraining first, then utility."""
    out = ["<h2>Leaderboard: unlearning methods by per-example leakage</h2>",
           ("<p>Each column answers one question. <b>U-LiRA AUC</b> (low/high: 95 % "
            "bootstrap over models and records): can an attacker who sees only the unlearned "
            "model tell, record by record, whether it ever trained on that record? 0.5 is a "
            "perfect unlearner; a method leaks in either direction, still more confident on "
            "forgotten records (under-unlearning) or less (over-unlearning), and <b>reads "
            "as</b> says which. Methods are ranked by their distance from retraining's AUC; "
            "those whose own permutation test finds no leak (the run's null control, at 1 %) "
            "are grouped with it (\"as retraining\"), and an attack reading below its permutation null is marked "
            "\"below chance\", not ranked as a small leak. <b>Records named</b>: records "
            "whose own permutation test rejects at the stated false-discovery rate "
            "(Benjamini-Hochberg). <b>eps lower bound</b>: with 95 % confidence the unlearned "
            "model is not (eps, 1e-5)-indistinguishable from retraining for any smaller eps "
            "(Clopper-Pearson on both error rates, threshold chosen on other models). "
            "<b>Chen AUC vs retrain</b> and the image attacks read the original against the "
            "unlearned model: they measure what publishing both reveals, which exact "
            "retraining reveals too, so they are given relative to retraining's.</p>")]
    status = set(df["image_attacks"].dropna()) if "image_attacks" in df.columns else set()
    if status == {"measured"}:
        out.append("<p>Image attacks (Hu et al., single deletions at a small budget): "
                   "recovery gain = PSNR of the recovered image minus the mean image's, in dB "
                   "(low/high: 95 % bootstrap over the forgotten samples, none from fewer "
                   "than two); label inf. acc = share of class-share requests whose forgotten "
                   "class was inferred.</p>")
    elif status:
        out.append(f"<p>Feature recovery and label inference: "
                   f"{_e(', '.join(sorted(status)))}.</p>")
    for seed, group in df.sort_values(["seed", "rank"]).groupby("seed"):
        cols = [c for c in LEADERBOARD_COLUMNS if c in group.columns
                and not (c in IMAGE_COLUMNS and group[c].isna().all())]
        frame = group[cols].rename(columns=LEADERBOARD_COLUMNS)
        out.append(f"<h3>seed {_e(seed)}</h3><div class='wide'>{_frame_html(frame)}</div>")
    return "\n".join(out)


def _provenance(frames: dict[str, pd.DataFrame]) -> str:
    seeds = sorted({int(s) for df in frames.values() if "seed" in df.columns
                    for s in df["seed"].dropna().unique()})
    wall = sum(float(df["wall_s"].sum()) for df in frames.values() if "wall_s" in df.columns)
    spec = _spec(frames)
    out = ["<h2>Reproducibility</h2>",
           (f"<p>Seeds: {_e(', '.join(map(str, seeds)) or '(none recorded)')}. "
           f"Wall time (sum of wall_s over all rows): {wall:.1f} s "
           f"({wall / 60:.1f} min).</p>"),
           "<h3>Package versions</h3>",
           _frame_html(pd.DataFrame(list(_versions().items()), columns=["package", "version"])),
           "<h3>Spec</h3>"]
    if spec:
        out.append(_frame_html(pd.DataFrame(list(spec.items()), columns=["key", "value"]),
                               max_rows=400))
    else:
        out.append("<p class='small'>(no cfg.* columns in the tables)</p>")
    out.append(f"<p class='small'>Tables: {_e(json.dumps(sorted(frames)))}</p>")
    return "\n".join(out)


def write_report(root: str, experiment: str, out: str | None = None) -> str:
    """Render one experiment and write the page (default RESULTS/<experiment>/report.html);
    return where it went."""
    results = Results(root, experiment)
    page = render(results).encode("utf-8")
    if out is None:
        return results.location.write_bytes(page, experiment, "report.html")
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(page)
        os.replace(tmp, out)  # a reader never sees half a page
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
