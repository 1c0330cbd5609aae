#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): the full demo profile and the VOC-shaped rehearsal, per-step times and
# peak GPU memory next to the 2-core CPU estimates. Sized for under 8 minutes on one H200.
#   bash benchmarks/gpu_check.sh --out /tmp/gpu_check --record benchmarks/records/gpu_check_h200.json
#   bash benchmarks/gpu_check.sh --out /tmp/gpu_check_cpu --device cpu --tiny      # tiny counts, on the CPU
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
exec python benchmarks/gpu_check.py "$@"
