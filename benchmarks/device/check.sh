#!/usr/bin/env bash
# Run THERE, on the GPU machine of the `device` tool, after benchmarks/device/pack.sh here:
#   run(command="bash benchmarks/device/check.sh", carry=[".whl"], timeout_s=590)
# One call: installs the carried packages into /tmp/site (that machine's python3 holds
# torch), runs the CUDA tests (tests/gpu) and the GPU benchmarks of run_all.py, and leaves in
# $OUT: nvidia-smi.txt, versions.txt, tests_gpu.log, run_all.log and benchmarks_gpu.md (the
# run_all section, to paste into docs/BENCHMARKS.md; rewritten after each benchmark).
# Settings (environment): MODE=full runs the benchmarks at the sizes the docs cite (default
# quick: with the tests, about five minutes); SKIP_TESTS=1 runs only the benchmarks; ONLY=
# names some of them; LIMIT_TESTS and LIMIT_EACH (seconds) bound the tests and each
# benchmark, so a hang in one part still brings the others' logs back. On a machine still
# warm from an earlier call the packages in /tmp/site are reused.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device-out}
PY=${PY:-python3}
MODE=${MODE:-quick}
mkdir -p "$OUT"
started=$(date +%s)
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  if [ ! -f /tmp/site/.unpacked ]; then  # a machine still warm keeps them from its last call
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "check.sh: installing .whl failed" >&2; exit 1; }
    tar -xJf .whl/ray.tar.xz -C /tmp/site || { echo "check.sh: unpacking Ray failed" >&2; exit 1; }
    touch /tmp/site/.unpacked
  fi
  export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export PATH=/tmp/site/bin:$PATH
fi
[ -d .whl/data ] && export UNLEARN_AUDIT_DATA=$PWD/.whl/data
export PYTHONUNBUFFERED=1
unset RAY_ADDRESS
echo "== $(date -u) mode=$MODE python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/versions.txt"
import importlib
for name in ("torch", "ray", "optuna", "opacus", "skops", "numpy", "pyarrow", "sklearn"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as err:  # a missing package is reported, the rest still runs
        print(name, "MISSING:", err)
import torch
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PYEOF
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
limit_tests=${LIMIT_TESTS:-240}
# Full sizes: the ConvNet's plain loop alone takes ~110 s on an H200, compilation more.
default_each=150
[ "$MODE" = full ] && default_each=300
limit_each=${LIMIT_EACH:-$default_each}
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "$limit_tests" "$PY" -m pytest -q -p no:cacheprovider -ra tests/gpu \
    > "$OUT/tests_gpu.log" 2>&1
  echo "tests/gpu: exit $? ($(tail -1 "$OUT/tests_gpu.log")) at $(( $(date +%s) - started )) s"
fi
quick=--quick
[ "$MODE" = full ] && quick=
# shellcheck disable=SC2086  # ONLY is a list of names
"$PY" benchmarks/run_all.py $quick --timeout "$limit_each" \
  --only ${ONLY:-inversion-convnet-cuda inversion-resnet18-cuda ensemble-cuda gpu-packing} \
  --out "$OUT/benchmarks_gpu.md" > "$OUT/run_all.log" 2>&1
echo "run_all: exit $? (section in benchmarks_gpu.md)"
grep -h -e '^###' -e '^(' -e 'models/s' -e '^| ' "$OUT/benchmarks_gpu.md" | cut -c1-240
echo "== done in $(( $(date +%s) - started )) s"
