#!/usr/bin/env bash
# Runs, on a GPU machine, in one call: the scheduler's GPU tests (plus its CPU tests, to see
# them pass there too), the diamond example and the per-task-cost benchmark.
# Results land in $OUT (default /tmp/streamdag-gpu): gpu.txt, tests.log, example.log,
# bench.json, bench.md, bench.log. Exit status: the tests' (the benchmark still runs).
# Usage (repo root): bash tools/device/run_scheduler_gpu.sh
set -uo pipefail
OUT=${OUT:-/tmp/streamdag-gpu}
mkdir -p "$OUT"
source tools/device/env.sh

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u;
  $PY -c "import cuda.core, numpy, sys; print('cuda.core', cuda.core.__version__, 'numpy', numpy.__version__, 'python', sys.version.split()[0])"; } \
  2>&1 | tee "$OUT/gpu.txt"

$PY -m pytest -q -p no:cacheprovider -rs tests/gpu/test_scheduler_gpu.py \
  tests/unit/test_scheduler_plan.py tests/unit/test_kernels_compile.py \
  tests/property/test_scheduler_props.py 2>&1 | tee "$OUT/tests.log"
rc=${PIPESTATUS[0]}

$PY examples/scheduler_diamond.py 2>&1 | tee "$OUT/example.log"
$PY tools/bench_scheduler.py --gpu --json "$OUT/bench.json" --md "$OUT/bench.md" 2>&1 \
  | tee "$OUT/bench.log"
exit "$rc"
