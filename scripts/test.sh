#!/usr/bin/env bash
# Set up .venv with the development extras and run every gate: ruff, mypy, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
. .venv/bin/activate
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy
# pyproject already passes -q; a second -q would hide the "N passed, N skipped" closing line
python -m pytest "$@"
