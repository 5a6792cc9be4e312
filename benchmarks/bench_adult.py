"""Many-model runs (issue 16, item 2): ``unlearn-audit run search_spaces/chen2021_adult.yaml
--num-cpus 2`` beside a plain sequential script that trains the same forests in one process.

    .venv/bin/python benchmarks/bench_adult.py                # paper scale: 420 forests
    .venv/bin/python benchmarks/bench_adult.py --scale 0.3    # quick: 3+3 sets x 6 deletions
    .venv/bin/python benchmarks/bench_adult.py --runs 2       # alternate the order twice
    .venv/bin/python benchmarks/bench_adult.py --tree /tmp/old  # another checkout's command

(a) the command, in a fresh process, with a fresh results folder and a fresh artifact store
(``--artifacts`` inside the same temporary folder), so no model is reused: the benchmark checks
that the ``models`` table holds every model with ``trained`` true. (b) the script, also a
fresh process: load Adult once; for every shadow and target set S_i (the same sets, deletions
and seeds the stage plans, from ``tasks.mia_splits``) fit ``RandomForestClassifier(n_estimators,
random_state=train seed, n_jobs=1)`` on S_i and on S_i minus each deleted record, one after
another, with scikit-learn's own ``fit``; take each pair's posteriors on its records (deleted,
negative, remaining); fit one decision-tree attack (``max_leaf_nodes=10``) on the shadow
pairs' ``direct_diff`` features and score the target pairs. Both wall times include start-up
(imports, data loading; the command also starts Ray and plans). The script's posteriors are
then compared with the ones the command stored, so both trained the same forests.

Prints one table row per run: wall times, the ratio (target of the issue: <= 0.55), the load
average before and after each side (other jobs may share the machine), and versions.
Figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "chen2021_adult.yaml"


def _sizes(scale: float) -> tuple[int, int]:
    """(set_num, unlearning_size) at ``scale`` of the paper's 10 sets x 20 deletions."""
    return max(2, round(10 * scale)), max(2, round(20 * scale))


def _overrides(scale: float) -> list[str]:
    if scale >= 1:
        return []
    set_num, size = _sizes(scale)
    return [f"membership.set_num={set_num}", f"membership.unlearning_size={size}",
            f"membership.deletions_per_task={size}"]


# --- (b) the plain script, run as a child process -------------------------------------------

def script(scale: float, out: str) -> None:
    """The sequential baseline; writes its timings and posteriors to ``out`` (npz + json)."""
    start = time.perf_counter()
    import numpy as np
    import yaml
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.tree import DecisionTreeClassifier

    from tasks.data import load_dataset
    from tasks.mia_splits import SIDES, paper_split, sample_sets

    spec = yaml.safe_load(SPEC.read_text())
    m = spec["membership"]
    set_num, size = (m["set_num"], m["unlearning_size"]) if scale >= 1 else _sizes(scale)
    trees = spec["model"]["n_estimators"]
    d = load_dataset(spec["dataset"]["name"])
    loaded = time.perf_counter()
    split = paper_split(len(d.y_train), m["split_seed"], m["replace_seed"])
    fit_s = 0.0
    posteriors = {}  # (side, set, pair) -> (p, q, label, records)
    for side in SIDES:
        for plan in sample_sets(split, side, set_num, m["set_size"], size, 1, spec["seed"],
                                m["deletion_sampling"]):
            members = np.asarray(plan.members)
            t = time.perf_counter()
            original = RandomForestClassifier(n_estimators=trees, random_state=plan.train_seed,
                                              n_jobs=1).fit(d.x_train[members],
                                                            d.y_train[members])
            fit_s += time.perf_counter() - t
            for pair in plan.pairs:
                keep = members[~np.isin(members, np.asarray(pair.deleted))]
                t = time.perf_counter()
                unlearned = RandomForestClassifier(
                    n_estimators=trees, random_state=plan.train_seed,
                    n_jobs=1).fit(d.x_train[keep], d.y_train[keep])
                fit_s += time.perf_counter() - t
                records = np.asarray(pair.deleted + pair.negatives + pair.remaining)
                label = np.asarray([1] * len(pair.deleted) + [0] * len(pair.negatives)
                                   + [1] * len(pair.remaining))
                posteriors[(side, plan.index, pair.index)] = (
                    original.predict_proba(d.x_train[records]),
                    unlearned.predict_proba(d.x_train[records]), label, records)
    trained = time.perf_counter()

    def rows(side: str):
        """direct_diff features of one side's ``single`` rows: the deleted record (member)
        and the negative of every pair."""
        x, y = [], []
        for (s, _, _), (p, q, label, _) in posteriors.items():
            if s == side:
                x += [p[0] - q[0], p[1] - q[1]]
                y += [label[0], label[1]]
        return np.asarray(x), np.asarray(y)

    xs, ys = rows("shadow")
    xt, yt = rows("target")
    attack = DecisionTreeClassifier(max_leaf_nodes=10, random_state=0).fit(xs, ys)
    auc = roc_auc_score(yt, attack.predict_proba(xt)[:, 1])
    end = time.perf_counter()
    np.savez(out + ".npz", **{f"{s}:{i}:{j}:{w}": v[k]
                              for (s, i, j), v in posteriors.items()
                              for k, w in ((0, "p"), (1, "q"), (3, "records"))})
    Path(out + ".json").write_text(json.dumps({
        "models": 2 * set_num * (size + 1), "load_s": loaded - start,
        "fit_s": fit_s, "train_and_posteriors_s": trained - loaded,
        "attack_s": end - trained, "in_process_s": end - start, "dt_direct_diff_auc": auc}))


# --- comparison with what the command stored -------------------------------------------------

def _compare(results: Path, artifacts: Path, baseline: str) -> tuple[int, int, int]:
    """(models in the ``models`` table, models marked trained, pairs whose stored posteriors
    differ from the script's): 0 differing pairs means both trained the same forests."""
    import numpy as np
    import pandas as pd

    models = pd.read_parquet(results / "chen2021_adult" / "models")
    ours = np.load(baseline + ".npz")
    stored: dict[str, tuple[dict[int, int], np.ndarray]] = {}

    def posterior(path: str, records) -> np.ndarray:
        if path not in stored:
            arrays = np.load(path)
            stored[path] = ({int(r): i for i, r in enumerate(arrays["indices"])},
                            arrays["logits"])
        where, logits = stored[path]
        return np.exp(logits[[where[int(r)] for r in records]].astype(np.float64))

    originals = models[models["role"] == "original"].set_index(["side", "set_index"])
    unlearned = models[models["role"] == "unlearned"].set_index(
        ["side", "set_index", "pair_index"])
    differ = 0
    for name in ours.files:
        side, i, j, what = name.split(":")
        if what != "p":
            continue
        records = ours[f"{side}:{i}:{j}:records"]
        p_path = originals.loc[(side, int(i)), "artifact"]
        q_path = unlearned.loc[(side, int(i), int(j)), "artifact"]
        p_path, q_path = (str(artifacts / Path(x).name) if not Path(x).exists() else x
                          for x in (p_path, q_path))
        # The command stores log(clip(p, 1e-12)) as float32: compare at that precision.
        for mine, path in ((ours[name], p_path), (ours[f"{side}:{i}:{j}:q"], q_path)):
            if not np.allclose(posterior(path, records), np.clip(mine, 1e-12, 1), rtol=1e-6,
                               atol=1e-7):
                differ += 1
                break
    return len(models), int(models["trained"].sum()), differ


# --- driver ------------------------------------------------------------------------------------

def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds (user + system) of ``root`` and its descendants (Linux /proc):
    the command's Ray processes are its children, its workers the raylet's."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                text = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            stats[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, grown = {root}, True
    while grown:
        grown = False
        for pid, (parent, _) in stats.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grown = True
    for pid in tree & stats.keys():
        seen[pid] = max(seen.get(pid, 0.0), stats[pid][1])


def _pipeline(tmp: Path, scale: float, num_cpus: int,
              tree: Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of its process tree, sampled every 0.2 s: a process's
    last moments before it exits may be missed). ``tree``: run the command of that checkout
    (``python -m orchestrator.cli.main`` from it, this checkout's data root) instead."""
    results, artifacts = tmp / "results", tmp / "artifacts"
    cli, env, cwd = [str(ROOT / ".venv" / "bin" / "unlearn-audit")], dict(os.environ), ROOT
    if tree is not None:
        from tasks.data import DATA_ROOT_ENV, resolve_data_root

        cli, cwd = [sys.executable, "-m", "orchestrator.cli.main"], tree
        env.update({"PYTHONPATH": str(tree), DATA_ROOT_ENV: str(resolve_data_root())})
    argv = [*cli, "run", str(SPEC), "--num-cpus", str(num_cpus), "--results", str(results),
            "--artifacts", str(artifacts), "--quiet"]
    for item in _overrides(scale):
        argv += ["--set", item]
    seen: dict[int, float] = {}
    start = time.perf_counter()
    with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                _tree_cpu(proc.pid, seen)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output = proc.communicate()[0]
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        sys.exit(f"unlearn-audit failed ({proc.returncode}):\n{output}")
    return wall, sum(seen.values())


def _script(tmp: Path, scale: float) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds, the script's own timings)."""
    out = str(tmp / "script")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child-script", out, "--scale", str(scale)],
                   cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(Path(out + ".json").read_text())


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _versions() -> str:
    from importlib.metadata import version

    names = ("scikit-learn", "numpy", "ray", "torch", "pyarrow")
    return (f"python {platform.python_version()}, "
            + ", ".join(f"{n} {version(n)}" for n in names)
            + f", {os.cpu_count()} CPUs ({platform.machine()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the paper's 10 sets x 20 deletions (default 1)")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1,
                        help="runs; the order of the two sides alternates")
    parser.add_argument("--tree", type=Path, default=None,
                        help="time the command of another checkout of the project (e.g. one "
                             "before a change), with this venv and data")
    parser.add_argument("--child-script", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_script:
        sys.path.insert(0, str(ROOT))
        script(args.scale, args.child_script)
        return
    sys.path.insert(0, str(ROOT))
    set_num, size = (10, 20) if args.scale >= 1 else _sizes(args.scale)
    print(f"chen2021_adult.yaml: {set_num}+{set_num} originals x {size} deletions = "
          f"{2 * set_num * (size + 1)} forests; {_versions()}")
    print(f"| run | command (--num-cpus {args.num_cpus}) | load before/after | script "
          "| load before/after | ratio | CPU s command / script | script: fits "
          "| models trained | posteriors differ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench_adult_") as name:
            tmp = Path(name)
            walls, cpus, loads = {}, {}, {}
            sides = ("command", "script") if run % 2 == 0 else ("script", "command")
            info: dict = {}
            for side in sides:
                before = _load()
                if side == "command":
                    walls[side], cpus[side] = _pipeline(tmp, args.scale, args.num_cpus,
                                                        args.tree)
                else:
                    walls[side], cpus[side], info = _script(tmp, args.scale)
                loads[side] = f"{before} -> {_load()}"
            n_models, n_trained, differ = _compare(tmp / "results", tmp / "artifacts",
                                                   str(tmp / "script"))
            ratio = walls["command"] / walls["script"]
            print(f"| {run + 1} ({' first, '.join(sides)} second) | {walls['command']:.1f} s "
                  f"| {loads['command']} | {walls['script']:.1f} s | {loads['script']} "
                  f"| **{ratio:.2f}x** | {cpus['command']:.0f} / {cpus['script']:.0f} "
                  f"| {info['fit_s']:.1f} s ({info['models']} forests) "
                  f"| {n_trained}/{n_models} | {differ} |", flush=True)


if __name__ == "__main__":
    main()
