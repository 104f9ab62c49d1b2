#!/usr/bin/env bash
# The full CPU table (run on a quiet machine): JAX vs the PyTorch twin at the smoke and DARTS search
# shapes, fast paths, compile-time settings, vmap sweeps. Appends to bench/RESULTS.md.
# ITERS/ROUNDS set the timed work per case; SHAPES/TORCH_FLAGS (e.g. --channels-last or --no-torch) too.
# SHAPES defaults to smoke: on a 2-core/24 GB CPU the DARTS shape does not run in useful time (the
# `shift` depthwise needs a 32.5 GB buffer; with `conv` two timed steps took over 15 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
ITERS=${ITERS:-5}; ROUNDS=${ROUNDS:-3}; SHAPES=${SHAPES:-smoke}; RES=${RES:-bench/RESULTS.md}
python bench/bench_steps.py --shapes "$SHAPES" --steps weight,arch --paths soft,hard --variants remat \
  --iters "$ITERS" --rounds "$ROUNDS" ${TORCH_FLAGS:-} --out "$RES"
python bench/bench_compile.py --shape smoke --path hard --iters "$ITERS" --out "$RES"
python bench/bench_sweep.py --shape smoke --ns 1,2,4,8 --iters "$ITERS" --out "$RES"
