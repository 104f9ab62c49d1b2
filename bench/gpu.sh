#!/usr/bin/env bash
# The whole GPU table in < 8 minutes: steps (smoke + DARTS search shape; weight/arch; soft/hard;
# bf16, remat), vmap sweep N=1,2,4,8, and a short timed DARTS-space search (extrapolated to 50 epochs).
# Results: $OUT/gpu_results.md (+ raw JSON), else bench/out/. Each section has its own time limit, so
# one slow section cannot eat the others' time. JAX numbers and fast-path ratios are the point here;
# the torch column is the twin on the same GPU when torch.cuda is available (else pass NO_TORCH=1).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-bench/out}; mkdir -p "$OUTDIR"
RES=$OUTDIR/gpu_results.md
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export ASOSE_JAX_CACHE=${ASOSE_JAX_CACHE:-/tmp/asose_jax_xla}
# offline machine: wheels carried in .whl/ (e.g. ml_collections) are installed first
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
python3 -c "import jax, flax, optax, ml_collections; print(jax.__version__, jax.devices())" || exit 1
TORCH=${NO_TORCH:+--no-torch}
python3 -c "import torch, parity.torch_network" 2>/dev/null || TORCH=--no-torch
echo "# GPU benchmarks $(date -u +%F)" > "$RES"
t0=$SECONDS
timeout 260 python3 bench/bench_steps.py --shapes smoke,darts --steps weight,arch --paths soft,hard \
  --variants bf16,remat --iters ${ITERS:-20} --rounds 3 --warmup 3 $TORCH --out "$RES" --json "$OUTDIR/steps.json" \
  2>&1 | tee "$OUTDIR/steps.log" | grep -v '^{' ; echo "steps: $((SECONDS-t0)) s"
timeout 100 python3 bench/bench_sweep.py --shape smoke --ns 1,2,4,8 --iters ${ITERS:-20} --out "$RES" \
  2>&1 | tail -14; echo "sweep: $((SECONDS-t0)) s"
timeout 150 python3 bench/bench_search.py --epochs ${EPOCHS:-1} --out "$RES" 2>&1 | tail -8
echo "total: $((SECONDS-t0)) s"
cat "$RES"
