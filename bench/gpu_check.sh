#!/usr/bin/env bash
# One-shot GPU verification of everything fastrepulse has: environment, real compilation and parity of
# the kernels on CUDA against the float64 oracle (also inside a patched pipeline), Gram accuracy per
# tiling, the kernel microbenchmarks and the end-to-end runs of Flux-dev and SD3.5-Large with random
# weights, and torch.compile(max-autotune) at B = 4. Writes raw logs, kernels.json, e2e.json,
# kernels-compile.json and their union results.json under $OUT (default: a fresh temp dir), and prints
# the end-to-end table last.
# Not yet run as a whole on a GPU: its parts are estimated at 6-9 minutes on an H100 (tests ~1, end to
# end ~2.5, kernels ~2, compile bounded at 2); give the device tool's run timeout_s=600.
#
# The package, nvtx and diffusers (with importlib_metadata) travel as wheels in .whl/ (no network there):
#   pip wheel --no-deps -w .whl . && pip download --no-deps -d .whl diffusers==0.42.1 importlib_metadata \
#     && pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl nvtx \
#        numba llvmlite
# (numba: the compiled host solver; without it, or without SciPy there, fastrepulse.solve runs its NumPy loop.)
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
# Serially: 8 pytest-xdist workers sharing the card ran past 540 s with failures (h100-2026-11-26-b).
"$PY" -P -m pytest tests/gpu tests/test_repel_parity.py -k cuda -q -p no:cacheprovider --maxfail=10 --durations=15 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# Most valuable first, so that a run cut short still answers the main questions.
"$PY" -P bench/bench_e2e.py --repeats 2 --out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

"$PY" -P bench/bench_kernels.py --quick --out "$OUT/kernels.json" 2>&1 | tee "$OUT/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

"$PY" -P bench/gram_accuracy.py 2>&1 | tee "$OUT/gram_accuracy.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# torch.compile(max-autotune) compiles and autotunes per shape: B = 4 at every shape, within a bound
# (${COMPILE_SECONDS:-120} s; 0 skips it).
if [ "${COMPILE_SECONDS:-120}" -gt 0 ]; then
  timeout "${COMPILE_SECONDS:-120}" "$PY" -P bench/bench_kernels.py --quick --compile --sizes 4 \
    --out "$OUT/kernels-compile.json" 2>&1 | tee "$OUT/bench-compile.log"
fi

"$PY" - "$OUT" <<'MERGE'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
read = lambda name: json.loads((out / name).read_text()) if (out / name).exists() else {}
kernels, e2e, compiled = read("kernels.json"), read("e2e.json"), read("kernels-compile.json")
merged = {**compiled, **kernels, **e2e}
merged["kernels"] = kernels.get("kernels", []) + [
    r for r in compiled.get("kernels", []) if r["variant"] == "torch-compile"
]
merged.setdefault("e2e", [])
(out / "results.json").write_text(json.dumps(merged, indent=1))
print(f"\n{merged.get('device', '?')}: end to end, one group of {merged.get('images', '?')} images")
for r in merged["e2e"]:
    print(f"{r['model']:12} {r['variant']:26} {r['seconds']:8.3f} s {r['overhead_pct']:+8.2f} % "
          f"peak memory {r['peak_mem_delta_pct']:+6.2f} %")
MERGE
exit $status
