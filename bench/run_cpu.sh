#!/usr/bin/env bash
# The full CPU table (run on a quiet machine): JAX vs the PyTorch twin at the smoke and DARTS search
# shapes, fast paths, compile-time settings, vmap sweeps. Appends to bench/RESULTS.md.
# ITERS/ROUNDS set the timed work per case; SHAPES/TORCH_FLAGS (e.g. --torch-formats contiguous or --no-torch) too.
# SHAPES defaults to smoke. DARTS=1 adds the DARTS-shape steps in the CPU recipe (`shift`, matmul 1x1s): the
# mixture weight step (edge scans vs unrolled) and both paths' weight and arch steps (plain vs
# remat_branch, and remat_branch with model.materialize_edge_grads), and the per-op table (bench_ops.py): ~1 hour
# and ~21 GB on a 2-core/24 GB machine. The torch twin runs in both memory formats with stock BN kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
ITERS=${ITERS:-5}; ROUNDS=${ROUNDS:-3}; SHAPES=${SHAPES:-smoke}; RES=${RES:-bench/RESULTS.md}
python bench/bench_steps.py --shapes "$SHAPES" --steps weight,arch --paths soft,hard --variants remat,unroll \
  --iters "$ITERS" --rounds "$ROUNDS" ${TORCH_FLAGS:-} --out "$RES"
python bench/bench_steps.py --shapes "$SHAPES" --steps weight,arch --paths soft,hard --variants remat_branch,remat_branch+mat_grads \
  --variant-steps weight,arch --iters "$ITERS" --rounds "$ROUNDS" ${TORCH_FLAGS:-} --out "$RES"
if [ "${DARTS:-0}" = 1 ]; then
  python bench/bench_steps.py --shapes darts --steps weight --paths soft --variants unroll --depthwise shift \
    --pointwise dot --iters 2 --rounds 2 --warmup 1 ${TORCH_FLAGS:-} --out "$RES"
  python bench/bench_steps.py --shapes darts --steps weight,arch --paths soft,hard --variants remat_branch,remat_branch+mat_grads \
    --variant-steps weight,arch --depthwise shift --pointwise dot --iters 3 --rounds 3 --warmup 1 ${TORCH_FLAGS:-} \
    --out "$RES"
  # glibc keeps freed blocks, so that neither side zeroes fresh pages on every call of an op (see bench_ops.py)
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
    python bench/bench_ops.py --shape darts --depthwise shift --pointwise dot --out "$RES"
fi
python bench/bench_compile.py --shape smoke --path hard --iters "$ITERS" --out "$RES"
python bench/bench_scan_update.py --out "$RES"
python bench/bench_sweep.py --shape smoke --ns 1,2,4,8 --iters "$ITERS" --out "$RES"
