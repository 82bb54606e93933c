#!/usr/bin/env bash
# One-shot GPU verification of everything fastrepulse has: environment, real compilation and parity of
# the kernels on CUDA against the float64 oracle (also inside a patched pipeline), the end-to-end runs of
# Flux-dev and SD3.5-Large with random weights (base, the paper-style loop, fastrepulse with the host solver
# and with the device solver: the CUDA default is the faster of the two), the kernel microbenchmarks, Gram
# accuracy per tiling, and optionally torch.compile(max-autotune) at B = 4. Writes raw logs, kernels.json,
# e2e.json, kernels-compile.json and their union results.json under $OUT (default: a fresh temp dir), and
# prints the end-to-end table last.
# Every part has its own time bound, most valuable first, so the whole run stays under 6 minutes
# (tests 80 s, end to end 200 s, kernels 45 s, Gram accuracy 20 s; COMPILE_SECONDS=0 by default) and a run
# cut short still answers the main questions; give the device tool's run timeout_s=420. bench_e2e.py writes e2e.json after each model.
#
# The package, nvtx and diffusers (with importlib_metadata) travel as wheels in .whl/ (no network there):
#   pip wheel --no-deps -w .whl . && pip download --no-deps -d .whl diffusers==0.42.1 importlib_metadata \
#     && pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl nvtx \
#        numba llvmlite
# numba (3.7 MB) and llvmlite (42 MB) are the compiled host solver; it also needs SciPy's LAPACK (a 38 MB wheel,
# which would take the carry past 64 MiB: rely on the machine's own SciPy). Without either, fastrepulse.solve runs
# its NumPy loop: env.txt says which ran ("host solver: compiled" or "numpy"), so the two solvers' comparison in
# e2e.json can be read right.
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
"$PY" -P -c "from fastrepulse.solver import compiled_loop; print('host solver:', 'numpy' if compiled_loop() is None \
else 'compiled')" 2>&1 | tee -a "$OUT/env.txt"

# -P: the checkout's fastrepulse/ (kernels live in kernels/) must not shadow the installed package.
# Serially: 8 pytest-xdist workers sharing the card ran past 540 s with failures (h100-2026-11-26-b).
timeout 80 "$PY" -P -m pytest tests/gpu tests/test_repel_parity.py -k cuda -q -p no:cacheprovider --maxfail=10 \
  --durations=15 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

timeout 200 "$PY" -P bench/bench_e2e.py --repeats 2 --out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

timeout 45 "$PY" -P bench/bench_kernels.py --quick --out "$OUT/kernels.json" 2>&1 | tee "$OUT/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

timeout 20 "$PY" -P bench/gram_accuracy.py 2>&1 | tee "$OUT/gram_accuracy.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# torch.compile(max-autotune) compiles and autotunes per shape: B = 4 at every shape, within a bound
# (COMPILE_SECONDS, default 0: skipped; measured on the H100 lease of 2026-11-26).
if [ "${COMPILE_SECONDS:-0}" -gt 0 ]; then
  timeout "${COMPILE_SECONDS}" "$PY" -P bench/bench_kernels.py --quick --compile --sizes 4 \
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
