#!/usr/bin/env bash
# On the GPU machine (device tool), from the repo root, carrying .whl (structlog):
#   bash tools/device/run_cuda_gpu.sh
# Runs the GPU tests of the CUDA training backend, compute-sanitizer on a small run, and the
# quick per-mode probe; logs go to $OUT (or ./out).
set -uo pipefail
out=${OUT:-out}; mkdir -p "$out"
source tools/device/env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$PY -m pytest tests/gpu/test_cuda_backend.py -q -x -p no:cacheprovider 2>&1 | tee "$out/pytest_cuda.log" | tail -30
cat > /tmp/san.py <<'EOF_PY'
import numpy as np
from streamdag.backends.cuda import CudaBackend
from streamdag.mutation import DuplicateDepth, DuplicateWidth, apply_mutations
from streamdag.params import ParamStore
import sys; sys.path.insert(0, "tests/gpu")
from test_cuda_backend import random_dag
rng = np.random.default_rng(5)
g = random_dag(rng, 12); p = ParamStore.initialize(g, rng)
x = rng.standard_normal((37, g.n_inputs)).astype(np.float32); y = rng.integers(0, g.n_classes, 37)
for mode, bwd, dt in [("persistent", "pull", np.float32), ("fused", "push", np.float32),
                      ("graph", "pull", np.float32), ("streams", "pull", np.float32),
                      ("streams", "pull", np.float64)]:
    gg, b = g.copy(), CudaBackend(mode=mode, backward=bwd, dtype=dt)
    pp = p.copy() if dt == np.float32 else ParamStore.initialize(g, np.random.default_rng(6), dtype=dt)
    b.track_scores((0.9, 0.9), {}, {})  # growth scores on the device
    for i in range(2): print(mode, bwd, b.step(gg, pp, x, y, lr=0.1, momentum=0.9).loss)
    print("above 0:", len(b.scores_passing("grad_std", 0.0)))
    # replayed on the device (no sync first), with noise: every growth.cu kernel runs
    r = apply_mutations(gg, pp, [DuplicateDepth(3), DuplicateWidth(5)], rng=rng, noise=0.05)
    b.forget_scores([3, 5]); b.on_mutation(gg, pp, r)
    print(mode, bwd, b.step(gg, pp, x, y, lr=0.1).loss, b.predict(gg, pp, x).shape)
    print("scores", len(b.read_scores()[0]))
# a compaction followed on the device (sd_move_slots): width duplications until a batch
# begins with one
gg, pp = g.copy(), p.copy(); b = CudaBackend(); b.step(gg, pp, x, y, lr=0.1)
v = pp.moved_version
for i in range(80):
    if pp.moved_version != v: break
    r = apply_mutations(gg, pp, [DuplicateWidth(int(rng.choice(gg.group_ids())))], rng=rng,
                        noise=0.05)
    b.on_mutation(gg, pp, r); b.step(gg, pp, x, y, lr=0.1)
print("compaction followed:", pp.moved_version != v, "after", i, "batches; loss",
      b.step(gg, pp, x, y, lr=0.1).loss)
EOF_PY
for tool in memcheck racecheck; do
  timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 $PY /tmp/san.py > "$out/sanitizer_$tool.log" 2>&1
  echo "compute-sanitizer $tool exit $? ; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer_$tool.log" | tail -1)"
done
timeout 300 $PY tools/cuda_quick.py S M L 2>&1 | tee "$out/cuda_quick.log"
# the same digits run on both backends, in float32 and in float64: accuracy and grown
# structure (float32 parts at the last mutation: docs/cuda-backend.md, "Digits")
for dt in float32 float64; do
  for b in reference cuda; do
    rm -rf "/tmp/digits-$b"; $PY -m streamdag --log-level warning train --dataset digits --backend $b \
      --dtype $dt --no-progress --out "/tmp/digits-$b" --summary-json "$out/digits-$dt-$b.json" \
      && cat "$out/digits-$dt-$b.json"
    cp "/tmp/digits-$b/network.dot" "$out/digits-$dt-$b.dot"
  done
  cmp "$out/digits-$dt-reference.dot" "$out/digits-$dt-cuda.dot" > /dev/null \
    && echo "$dt: same grown structure" | tee -a "$out/digits.txt" \
    || echo "$dt: structures differ" | tee -a "$out/digits.txt"
done
# the verdicts again, last, where a caller that keeps only the tail of the output sees them
echo "== summary"; cat "$out/gpu.txt"; tail -1 "$out/pytest_cuda.log"
for tool in memcheck racecheck; do
  echo "compute-sanitizer $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer_$tool.log" | tail -1)"
done
cat "$out/digits.txt"
