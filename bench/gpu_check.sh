#!/usr/bin/env bash
# One-shot GPU verification of everything fastrepulse has: environment, real compilation and parity of
# the kernels on CUDA against the float64 oracle, Gram accuracy per tiling, and the kernel
# microbenchmarks. Writes raw logs and kernels.json under $OUT (default: a fresh temp dir) and prints
# the benchmark table last.
#
# The package and nvtx travel as wheels in .whl/ (no network on the GPU machine):
#   pip wheel --no-deps -w .whl . && pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl nvtx
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: ${FASTREPULSE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/fastrepulse-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/fastrepulse-site${PYTHONPATH:+:$PYTHONPATH}
fi

# -P: the checkout's fastrepulse/ (kernels live in kernels/) must not shadow the installed package.
"$PY" -P -m pytest tests/gpu tests/test_repel_parity.py -k cuda -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

"$PY" -P bench/gram_accuracy.py 2>&1 | tee "$OUT/gram_accuracy.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

"$PY" -P bench/bench_kernels.py --quick --out "$OUT/kernels.json" 2>&1 | tee "$OUT/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
