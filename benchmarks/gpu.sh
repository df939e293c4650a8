#!/usr/bin/env bash
# The GPU checks in one go, under 8 minutes on one H100/H200: the CUDA tests, then
# benchmarks/gpu.py (PGD-L∞ 40 at batch 256 against the GPU limit and torchattacks, fp32 and
# bfloat16; the PGD security curve on 1,000 images). One table is printed at the end.
#
#   bash benchmarks/gpu.sh            # results to benchmarks/results/gpu.{json,md}
#   OUT=/some/dir bash benchmarks/gpu.sh
#
# On a machine without CUDA it runs the CPU part (a quick benchmark; the CUDA tests skip cleanly).
# A machine without network can be given wheels in .gpu/whl (torchattacks, platformdirs) and a
# warm model/data cache in .gpu/cache (EVASION_CACHE); both are optional.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if compgen -G ".gpu/whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/evasion-site .gpu/whl/*.whl \
    && export PYTHONPATH=/tmp/evasion-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
[ -d .gpu/cache ] && export EVASION_CACHE=${EVASION_CACHE:-$PWD/.gpu/cache}
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: running the CPU part only"
  $PY -m pytest -p no:cacheprovider -q tests/test_mixed_precision.py
  exec $PY benchmarks/gpu.py --device cpu --quick --out "$OUT"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
echo "== CUDA tests =="
timeout 300 $PY -m pytest -p no:cacheprovider -q $XDIST -rs tests -k "cuda or bfloat16 or low_precision or device" \
  2>&1 | tee "$OUT/gpu-tests.log" | tail -25 || status=1
echo "== benchmark =="
timeout 300 $PY benchmarks/gpu.py --device cuda --out "$OUT" || status=1
exit $status
