#!/usr/bin/env bash
# Stall reasons of the step kernels at dag-bench M (a development probe; needs ncu).
set -uo pipefail
out=${OUT:-out}; mkdir -p "$out"
source tools/device/env.sh
timeout 400 ncu --clock-control none --kernel-name regex:"sd_step_flow|sd_wgrad" --launch-skip 2 --launch-count 2 \
  --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis --section InstructionStats --section ComputeWorkloadAnalysis \
  $PY tools/device/ncu_probe.py > "$out/ncu.txt" 2>&1
echo "ncu exit $?"
grep -E "sd_|Duration|Stall|Warp Cycles|Registers|Achieved Occupancy|L1/TEX Hit|L2 Hit|Local|Block Limit|Theoretical Occ|Mem Busy|Max Bandwidth|Compute \(SM\)" "$out/ncu.txt" | head -150
