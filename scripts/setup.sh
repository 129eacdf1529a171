#!/usr/bin/env bash
# Creates .venv when missing, installs the pinned requirements and builds sparsekit (and its C++
# extension) in place. Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
# pip, quiet, without its warnings about package locations its configuration names but this
# machine lacks
quiet_pip() {
  pip --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip install -r requirements-cpu.txt
# CUTLASS's CuTe headers for the CUDA kernels; --no-deps: its Python tools' dependencies (cuda-python,
# scipy, ...) are not needed for the headers.
quiet_pip install --no-deps nvidia-cutlass==4.2.0.0
quiet_pip install --no-build-isolation --no-deps -e .
