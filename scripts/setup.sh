#!/usr/bin/env bash
# Creates .venv when missing, installs the pinned requirements and builds sparsekit (and its C++
# extension) in place. Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check -r requirements-cpu.txt
# CUTLASS's CuTe headers for the CUDA kernels; --no-deps: its Python tools' dependencies (cuda-python,
# scipy, ...) are not needed for the headers.
pip install --quiet --disable-pip-version-check --no-deps nvidia-cutlass==4.2.0.0
pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
