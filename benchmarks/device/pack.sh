#!/usr/bin/env bash
# Run HERE (a CPU machine with pip): packs into .whl/ (git-ignored) what the GPU machine of the
# `device` tool lacks, so that benchmarks/device/check.sh can run there with nothing fetched:
#   - cp312 wheels of this project's dependencies missing from that machine's image (its
#     python3 is 3.12 and holds torch, numpy, pandas, pyarrow, scikit-learn, ...; the list
#     below is this project's dependency closure minus that image's packages, 2026-12-04);
#   - Ray as a stripped tar.xz: its wheel (79 MB) is over the 64 MiB a call may carry; the
#     Java jars, RLlib, Serve, LLM and the dashboard's web client are left out (unused here);
#   - a 2,000-image slice of the CIFAR-10 subset, if ../shared/data has it (the data root
#     beside the checkout does not travel).
# Versions are the ones installed in .venv, so the GPU run tests what CPU CI tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "pack.sh: no .venv here; run 'make venv' first" >&2; exit 2; }
PACKAGES="alembic annotated-types colorlog jsonschema jsonschema-specifications mako opacus
optuna prettytable pydantic pydantic-core referencing rpds-py skops sqlalchemy tensorboardx
typing-inspection tzdata wcwidth"
rm -rf .whl && mkdir -p .whl
pins=()
for p in $PACKAGES; do
  pins+=("$p==$("$PY" -c "from importlib.metadata import version; print(version('$p'))")")
done
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
ray_version=$("$PY" -c "from importlib.metadata import version; print(version('ray'))")
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$tmp" "ray==$ray_version"
(cd "$tmp" && mkdir site && cd site && unzip -q ../ray-*.whl \
  && tar -cJf ../ray.tar.xz --exclude=ray/jars --exclude=ray/rllib --exclude=ray/serve \
       --exclude=ray/llm --exclude=ray/dashboard/client .)
mv "$tmp/ray.tar.xz" .whl/
if [ -f ../shared/data/cifar10/cifar10_subset.npz ]; then
  mkdir -p .whl/data/cifar10
  "$PY" - <<'PYEOF'
import numpy as np
src = np.load("../shared/data/cifar10/cifar10_subset.npz")
np.savez_compressed(".whl/data/cifar10/cifar10_subset.npz",
                    x_train=src["x_train"][:2000], y_train=src["y_train"][:2000],
                    x_test=src["x_test"][:500], y_test=src["y_test"][:500])
PYEOF
fi
ls -la .whl
size=$(du -sb .whl | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "pack.sh: .whl holds $((size / 1048576)) MiB; with the tracked tree $(((size + tree) / 1048576)) MiB of the 64 a call may carry"
[ $((size + tree)) -lt $((62 * 1048576)) ] || { echo "pack.sh: too large to carry" >&2; exit 1; }
