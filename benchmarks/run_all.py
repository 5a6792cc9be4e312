"""Every benchmark of ``docs/BENCHMARKS.md`` in one run, each beside its plain alternative, with
the machine, its load and the package versions recorded (issue 16, item 6).

    .venv/bin/python benchmarks/run_all.py            # the configurations the docs cite
    .venv/bin/python benchmarks/run_all.py --quick    # smaller sizes: minutes, for a smoke run
    .venv/bin/python benchmarks/run_all.py --only startup sweep

Each benchmark runs as its own process, one after another (they would share the cores
otherwise), and its output goes verbatim into the section of ``docs/BENCHMARKS.md`` between
the ``run_all`` markers, which this command rewrites (the hand-written analyses around it stay
as they are). A benchmark that fails is recorded as failed, the others still run, and the exit
status is 1. ``--out FILE`` writes the section to another file instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- run_all: begin -->", "<!-- run_all: end -->"

# name -> (what it compares, full arguments, quick arguments)
BENCHMARKS = {
    "startup": ("command start-up beside importing torch", ["bench_startup.py", "--runs", "5"],
                ["bench_startup.py", "--runs", "3"]),
    "inversion-convnet": ("ConvNet feature recovery: vectorised vs one trial at a time",
                          ["bench_inversion.py", "--model", "convnet", "--iterations", "20",
                           "--vmap"],
                          ["bench_inversion.py", "--model", "convnet", "--iterations", "3",
                           "--targets", "4"]),
    "inversion-resnet18": ("ResNet-18 feature recovery: vectorised vs one trial at a time",
                           ["bench_inversion.py", "--model", "resnet18", "--iterations", "2",
                            "--targets", "8", "--vmap"],
                           ["bench_inversion.py", "--model", "resnet18", "--iterations", "1",
                            "--targets", "2"]),
    "inversion-mlp": ("digits MLP feature recovery: vectorised vs one trial at a time",
                      ["bench_inversion.py", "--model", "mlp", "--iterations", "200",
                       "--threads", "1", "--vmap"],
                      ["bench_inversion.py", "--model", "mlp", "--iterations", "30",
                       "--threads", "1"]),
    "ensemble": ("stacked ensemble vs one model at a time", ["bench_ensemble.py"],
                 ["bench_ensemble.py", "--members", "16", "--epochs", "5"]),
    "adult": ("chen2021_adult.yaml vs a sequential script", ["bench_adult.py"],
              ["bench_adult.py", "--scale", "0.3"]),
    "sweep": ("orchestration cost at 1k/10k/100k units vs empty Ray tasks", ["bench_sweep.py"],
              ["bench_sweep.py", "--sizes", "1000", "10000"]),
}


def _versions() -> str:
    names = ("torch", "ray", "pyarrow", "numpy", "scikit-learn", "optuna", "pandas")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                   .splitlines() if line.startswith("MemTotal"))
        memory = f"{mem / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "unknown memory"
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {memory}, {gpu}, {platform.system()}"


def _commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" with uncommitted changes" if git("status", "--porcelain") else "")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _run(name: str, args: list[str]) -> str:
    command = [sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]]
    shown = ".venv/bin/python benchmarks/" + " ".join(args)
    print(f"[run_all] {name}: {shown}", file=sys.stderr, flush=True)
    before, start = _load(), time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    out = done.stdout.strip()
    if done.returncode:
        out += "\n" + "\n".join(done.stderr.strip().splitlines()[-10:])
    return (f"### {name}: {BENCHMARKS[name][0]}\n\n`{shown}`: {status}, {wall:.0f} s, "
            f"load average (1/5/15 min) {before} before, {_load()} after\n\n"
            f"```text\n{out}\n```\n")


def _write(section: str, out: Path) -> None:
    block = f"{BEGIN}\n{section}{END}\n"
    if out == DOC:
        text = DOC.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + block + rest.split(END, 1)[1].lstrip("\n")
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        text = block
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)  # never a half-written document


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None,
                    metavar="NAME", help=f"some of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", type=Path, default=DOC, help="where the section goes")
    args = ap.parse_args()
    names = args.only or list(BENCHMARKS)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [_run(name, BENCHMARKS[name][2 if args.quick else 1]) for name in names]
    header = (f"## Latest full run (`benchmarks/run_all.py{' --quick' if args.quick else ''}`)"
              f"\n\nGenerated {started}; commit {_commit()}.\nMachine: {_machine()}.\n"
              f"Versions: {_versions()}.\n"
              + ("Quick sizes: a smoke run, not the figures the sections above discuss.\n"
                 if args.quick else "") + "\n")
    _write(header + "\n".join(parts), args.out)
    print(f"[run_all] wrote {args.out}", file=sys.stderr)
    return 1 if any("FAILED" in p.split("\n", 3)[2] for p in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
