#!/usr/bin/env bash
# Stall reasons of the step kernels at dag-bench M (a development probe; needs ncu).
set -uo pipefail
out=${OUT:-out}; mkdir -p "$out"
if ! python3 -c "import structlog" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
timeout 400 ncu --clock-control none --kernel-name regex:"sd_step_rows|sd_forward|sd_wgrad" --launch-skip 2 --launch-count 4 \
  --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \
  python3 tools/device/ncu_probe.py > "$out/ncu.txt" 2>&1
echo "ncu exit $?"
grep -E "sd_|Duration|Stall|Warp Cycles|Registers|Achieved Occupancy|L1/TEX Hit|L2 Hit|Local|Block Limit|Theoretical Occ|Mem Busy|Max Bandwidth|Compute \(SM\)" "$out/ncu.txt" | head -150
