#!/usr/bin/env bash
# The GPU table: steps (smoke + DARTS search shape; weight/arch; soft/hard; bf16, remat), the vmap
# sweep N=1,2,4,8, and a timed DARTS-space search on a short split (extrapolated to 50 epochs).
# On an H200 each step compiles in 20-40 s, so all of it needs ~30 minutes; a 15-minute lease fits
# one section: SECTIONS=steps|sweep|search (default all three). Each section has its own time limit
# (LIMIT seconds, default 600); NS picks the sweep sizes; DEPTHWISE (auto|shift|conv) and POINTWISE (conv|dot:
# the matmul 1x1 convs) apply to every section; REMAT_BRANCH=1 gives the search model.remat_branch.
# SHAPES, STEPS, PATHS, VARIANTS and VARIANT_STEPS narrow the steps section, e.g. the single path's remat_branch
# (not yet measured on a GPU): SECTIONS=steps SHAPES=darts PATHS=hard VARIANTS=remat_branch VARIANT_STEPS=weight,arch
# SKIP_FP32=1 runs only the listed variants. Results are appended to $OUT/gpu_results.md (+ raw JSON and logs
# named by section), else bench/out/, so several invocations with different settings fill one file.
# The torch column is the twin on the same GPU when torch.cuda is available (else NO_TORCH=1).
# The device image (jax 0.11.2, flax 0.12.10) lacks ml_collections and tensorboardX: carry their wheels in .whl/.
# Known: POINTWISE=dot at the DARTS shape aborts XLA's GPU compiler (jax 0.11.2, Triton GEMM fusion:
# "triton_tiling_propagation.cc:703 Check failed"); it ran at the smoke shape (bench/RESULTS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-bench/out}; mkdir -p "$OUTDIR"
RES=$OUTDIR/gpu_results.md
SECTIONS=${SECTIONS:-steps,sweep,search}; LIMIT=${LIMIT:-600}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# offline machine: wheels carried in .whl/ (e.g. ml_collections) are installed first
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
python3 -c "import jax, flax, optax, ml_collections, asose_jax.phases; print(jax.__version__, jax.devices())" || exit 1
TORCH=${NO_TORCH:+--no-torch}
python3 -c "import torch, parity.torch_network" 2>/dev/null || TORCH=--no-torch
TAG=${TAG:-$(date -u +%H%M%S)}
echo "# GPU benchmarks $(date -u '+%F %H:%M') ($TAG: SECTIONS=$SECTIONS DEPTHWISE=${DEPTHWISE:-auto} POINTWISE=${POINTWISE:-conv})" >> "$RES"
t0=$SECONDS
if [[ $SECTIONS == *steps* ]]; then
  timeout "$LIMIT" python3 bench/bench_steps.py --shapes ${SHAPES:-smoke,darts} --steps ${STEPS:-weight,arch} \
    --paths ${PATHS:-soft,hard} --variants ${VARIANTS:-bf16,remat} --variant-steps ${VARIANT_STEPS:-weight} \
    --iters ${ITERS:-20} --rounds ${ROUNDS:-3} --warmup 3 --depthwise ${DEPTHWISE:-auto} --pointwise ${POINTWISE:-conv} \
    ${SKIP_FP32:+--skip-fp32} $TORCH --out "$RES" --json "$OUTDIR/steps_$TAG.json" \
    2>&1 | tee "$OUTDIR/steps_$TAG.log" | grep -v '^{' ; echo "steps: $((SECONDS-t0)) s"
fi
if [[ $SECTIONS == *sweep* ]]; then
  timeout "$LIMIT" python3 bench/bench_sweep.py --shape smoke --ns ${NS:-1,2,4,8} --iters ${ITERS:-20} --no-hard \
    --depthwise ${DEPTHWISE:-conv} --pointwise ${POINTWISE:-conv} --out "$RES" 2>&1 | tee "$OUTDIR/sweep_$TAG.log" | tail -14; echo "sweep: $((SECONDS-t0)) s"
fi
if [[ $SECTIONS == *search* ]]; then
  timeout "$LIMIT" python3 bench/bench_search.py --mixture --train ${TRAIN:-6400} --epochs ${EPOCHS:-2} --out "$RES" \
    --depthwise ${DEPTHWISE:-conv} --pointwise ${POINTWISE:-conv} ${REMAT_BRANCH:+--remat-branch} \
    2>&1 | tee "$OUTDIR/search_$TAG.log" | tail -8; echo "search: $((SECONDS-t0)) s"
fi
echo "total: $((SECONDS-t0)) s"
tail -n +$(grep -n "($TAG:" "$RES" | tail -1 | cut -d: -f1) "$RES"
