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
pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
