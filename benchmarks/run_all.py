"""Every benchmark of ``docs/BENCHMARKS.md`` in one run, each beside its plain alternative, with
the machine, its load and the package versions recorded (issue 16, item 6).

    .venv/bin/python benchmarks/run_all.py            # the configurations the docs cite
    .venv/bin/python benchmarks/run_all.py --quick    # smaller sizes: minutes, for a smoke run
    .venv/bin/python benchmarks/run_all.py --only startup sweep

Where CUDA is present it also runs the GPU benchmarks (recovery throughput on the device at
fp32 beside TF32 or bf16, with the PSNR of each). Each benchmark runs as its own process, one
after another (they would share the cores otherwise), and its output goes verbatim into the
section of ``docs/BENCHMARKS.md`` between the ``run_all`` markers, which this command rewrites
(the hand-written analyses around it stay as they are). With ``--only``, the named
benchmarks' subsections are replaced and the others kept as they were, each saying when and
at which commit it ran. A benchmark that fails is recorded as failed, the others still run,
and the exit status is 1; ``--timeout S`` stops any one benchmark after S seconds, recorded
the same way. The section is rewritten after each benchmark, so a run stopped part-way keeps
what it measured. ``--out FILE`` writes the section to another file instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- run_all: begin -->", "<!-- run_all: end -->"


def _inv(model: str, iterations: int, more: str = "") -> str:
    """The arguments of one feature-recovery benchmark."""
    return f"bench_inversion.py --model {model} --iterations {iterations} {more}".strip()


# name -> (what it compares, full arguments, quick arguments)
BENCHMARKS = {
    "startup": ("command start-up beside importing torch",
                "bench_startup.py --runs 5", "bench_startup.py --runs 3"),
    "inversion-convnet": ("ConvNet feature recovery: vectorised vs one trial at a time",
                          _inv("convnet", 20, "--vmap --precision bf16 --plain-flushed"),
                          _inv("convnet", 3, "--targets 4")),
    "inversion-convnet-bf16": (("ConvNet recovery at a converging budget: bf16's effect on "
                               "PSNR, and compiled"),
                               _inv("convnet", 300, "--targets 4 --precision bf16 "
                                                    "--plain-flushed --compile"),
                               _inv("convnet", 30, "--targets 2 --precision bf16")),
    "recovery-profile": ("where a ConvNet recovery step spends its time (fp32, bf16, compile)",
                         "bench_recovery_profile.py",
                         ("bench_recovery_profile.py --targets 4 --steps 2 --group-iterations 3 "
                         "--no-compile")),
    "denormals": ("training and label probing with denormal floats flushed vs not",
                  "bench_denormals.py", "bench_denormals.py --quick"),
    "inversion-resnet18": ("ResNet-18 feature recovery: vectorised vs one trial at a time",
                           _inv("resnet18", 6, "--targets 8 --vmap"),
                           _inv("resnet18", 1, "--targets 2")),
    "inversion-mlp": ("digits MLP feature recovery: vectorised vs one trial at a time",
                      _inv("mlp", 200, "--threads 1 --vmap --precision bf16"),
                      _inv("mlp", 30, "--threads 1 --precision bf16")),
    "ensemble": ("stacked ensemble vs one model at a time", "bench_ensemble.py",
                 "bench_ensemble.py --members 16 --epochs 5"),
    "adult": ("chen2021_adult.yaml vs a sequential script", "bench_adult.py",
              "bench_adult.py --scale 0.3"),
    "sweep": ("orchestration cost at 1k/10k/100k units vs empty Ray tasks", "bench_sweep.py",
              "bench_sweep.py --sizes 1000 10000"),
}
# Where a GPU is present: the same recovery on it, at fp32 and TF32 / bf16, with throughput;
# shadow-model training on it in models per second; fractional packing of tasks on it.
GPU_BENCHMARKS = {
    "inversion-convnet-cuda": ("ConvNet feature recovery on the GPU (fp32 vs TF32, compiled)",
                               # The plain loop runs ~60 trial-iterations/s on an H200 whatever
                               # the size: 32 x 2 x 100 keeps it near 110 s (64 x 2 x 200 did
                               # not finish in 230 s).
                               _inv("convnet", 100, "--targets 32 --device cuda --precision tf32 "
                                                    "--compile"),
                               _inv("convnet", 20, "--targets 16 --device cuda --precision tf32")),
    "inversion-resnet18-cuda": ("ResNet-18 feature recovery on the GPU (fp32 vs bf16)",
                                _inv("resnet18", 20,
                                     "--targets 32 --device cuda --precision bf16"),
                                _inv("resnet18", 5, "--targets 8 --device cuda --precision bf16")),
    "ensemble-cuda": ("digits MLPs trained on the GPU: one at a time vs one ensemble (models/s)",
                      "bench_ensemble.py --device cuda --members 512 --single 32",
                      "bench_ensemble.py --device cuda --members 64 --single 8 --epochs 5"),
    "gpu-packing": ("quickstart on the GPU: one task per GPU vs 2 or 4 sharing it",
                    "bench_gpu_packing.py",
                    "bench_gpu_packing.py --shares 1 0.25 --set training.epochs=3"),
}


ALL = {**BENCHMARKS, **GPU_BENCHMARKS}


def _with_gpu() -> dict:
    """Every benchmark this machine can run: the GPU ones only where CUDA is present."""
    import torch

    return {**BENCHMARKS, **(GPU_BENCHMARKS if torch.cuda.is_available() else {})}


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
            gpu = ", ".join(torch.cuda.get_device_name(i)
                            for i in range(torch.cuda.device_count()))
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


def _run(name: str, arguments: str, timeout: float | None = None) -> str:
    args = arguments.split()
    command = [sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]]
    shown = ".venv/bin/python benchmarks/" + arguments
    print(f"[run_all] {name}: {shown}", file=sys.stderr, flush=True)
    before, start = _load(), time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False,
                              timeout=timeout)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as late:  # what it printed before its limit is kept
        code = f"stopped at its {timeout:g} s limit"
        stdout, stderr = (_text(late.stdout), _text(late.stderr))
    wall = time.perf_counter() - start
    status = "ok" if code == 0 else f"FAILED ({'exit ' if isinstance(code, int) else ''}{code})"
    out = stdout.strip()
    if code:
        out += "\n" + "\n".join(stderr.strip().splitlines()[-10:])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"### {name}: {ALL[name][0]}\n\n`{shown}`: {status}, {wall:.0f} s, "
            f"load average (1/5/15 min) {before} before, {_load()} after; {when}, "
            f"commit {_commit()}\n\n```text\n{out}\n```\n")


def _text(captured: bytes | str | None) -> str:
    if isinstance(captured, bytes):
        return captured.decode(errors="replace")
    return captured or ""


def _earlier_parts(text: str) -> dict[str, str]:
    """The subsections of the section already in the document, by benchmark name."""
    if BEGIN not in text or END not in text:
        return {}
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    # A subsection written before each said when it ran gets its run's date and commit.
    found = re.search(r"Generated ([^;]+? UTC)[^;]*; commit ([^.]+)\.", block)
    stamp = f"; {found.group(1)}, commit {found.group(2)}" if found else ""
    parts = {}
    for chunk in block.split("\n### ")[1:]:
        name = chunk.split(":", 1)[0]
        if name in ALL:
            title, status, rest = ("### " + chunk.rstrip("\n")).split("\n\n", 2)
            if " UTC, commit " not in status:
                status += stamp
            parts[name] = f"{title}\n\n{status}\n\n{rest}\n"
    return parts


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
    ap.add_argument("--only", nargs="+", choices=sorted(ALL), default=None,
                    metavar="NAME", help=f"some of: {', '.join(ALL)}")
    ap.add_argument("--out", type=Path, default=DOC, help="where the section goes")
    ap.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="stop a benchmark after this long (recorded as failed, with its "
                         "output so far); the others still run")
    args = ap.parse_args()
    if args.timeout is not None and not args.timeout > 0:
        ap.error(f"--timeout {args.timeout:g}: expected a number of seconds above 0")
    names = args.only or list(_with_gpu())
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kept = {} if args.only is None or args.out != DOC else _earlier_parts(DOC.read_text())
    command = "benchmarks/run_all.py" + (" --quick" if args.quick else "")
    header = (f"## Latest full run (`{command}`)\n\nGenerated {started}"
              + (f" for {', '.join(names)} (the other subsections are from earlier runs; "
                 "each says when it ran)" if args.only and kept else "")
              + f"; commit {_commit()}.\nMachine: {_machine()}.\nVersions: {_versions()}.\n"
              + ("Quick sizes: a smoke run, not the figures the sections above discuss.\n"
                 if args.quick else "") + "\n")
    fresh: dict[str, str] = {}
    for name in names:
        fresh[name] = _run(name, ALL[name][2 if args.quick else 1], args.timeout)
        # Written after each benchmark, so a run stopped later keeps what it measured.
        parts = [fresh.get(n) or kept.get(n) for n in ALL]
        _write(header + "\n".join(p for p in parts if p), args.out)
    print(f"[run_all] wrote {args.out}", file=sys.stderr)
    return 1 if any("FAILED" in p.split("\n", 3)[2] for p in fresh.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
