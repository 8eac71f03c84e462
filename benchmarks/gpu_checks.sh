#!/usr/bin/env bash
# Every GPU measurement of the fast path in one call, under 8 minutes on one H100 or H200 (issue #8):
#   1. throughput of one SiD iteration (CIFAR-10 DDPM++ networks, random weights) per variant, vs the official
#      settings measured in the same process, with host-device sync counts;
#   2. soundness: 200 iterations from the same weights and seeds in fp32 and in each fast precision: loss deviations,
#      generator/fake-score update deviations, NaN check (fp32-cl is the reordering floor, fp16 the official mode,
#      with the preset's Adam eps so that only the precision differs);
#   3. FID-50k cost: generation per precision + an Inception-v3-sized stand-in detector (random weights: timings only);
#   4. torch.compile of the best variant, in whatever time is left.
# Each section has its own timeout and prints each variant as it finishes, so a slow section loses only its tail.
# Run from the repository root with the GPU machine's python3 (torch preinstalled; sid needs no install):
#   bash benchmarks/gpu_checks.sh        # logs and JSON under $OUT (default ./gpu-checks): 8 files at most
set -uo pipefail
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET=470  # seconds for the whole script
start=$SECONDS
section() { echo; echo "=== $1 (at $((SECONDS - start)) s)"; }
left() { echo $((BUDGET - (SECONDS - start))); }

section machine
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/machine.txt"

section "throughput (batch 64 as in docs/sid-facts.md section 7, then 256)"
timeout 170 $PY benchmarks/step_throughput.py --device cuda --preset cifar10-uncond --batch 64 --sync-check \
  --iterations 6 --warmup 2 --repeats 3 --json "$OUT/throughput.json" \
  --variants official,fp32,tf32,fp16,bf16,bf16-cl,tf32-cl,bf16-tf32-cl,tf32-b256,bf16-cl-b256,bf16-tf32-cl-b256,bf16-tf32-cl-fit-b256 \
  2>&1 | tee "$OUT/throughput.log"

section "soundness: 200 iterations, same weights and seeds"
timeout 150 $PY benchmarks/step_throughput.py --device cuda --preset cifar10-uncond --batch 8 --curves 200 \
  --variants fp32,fp32-cl,fp16,bf16-tf32,bf16,tf32 --json "$OUT/curves.json" 2>&1 | tee "$OUT/curves.log"

section "FID-50k pieces (stand-in detector: timings only)"
timeout 80 $PY benchmarks/fid_throughput.py --device cuda --preset cifar10-uncond --fid-images 50000 --batch-per-device 1000 \
  --precisions tf32,bf16 --detector-precisions fp32 2>&1 | tee "$OUT/fid.log"
timeout 30 $PY benchmarks/fid_throughput.py --device cuda --preset cifar10-uncond --fid-images 10000 --batch-per-device 1000 \
  --precisions tf32 --detector-precisions fp32,bf16 2>&1 | tee -a "$OUT/fid.log"

remaining=$(left)
section "torch.compile (${remaining} s left)"
if [ "$remaining" -gt 60 ]; then
  timeout $((remaining - 5)) $PY benchmarks/step_throughput.py --device cuda --preset cifar10-uncond --batch 64 \
    --iterations 6 --warmup 3 --variants official,bf16-tf32-cl,bf16-tf32-cl-compile --json "$OUT/compile.json" \
    2>&1 | tee "$OUT/compile.log"
else
  echo "skipped: not enough time left" | tee "$OUT/compile.log"
fi
section "done"
