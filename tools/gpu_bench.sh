#!/usr/bin/env bash
# The GPU benchmarks of one device session, in one call (each part under its own
# time limit): lr_jax's full-size train step and inference, then MaskGIT batched
# editing in bfloat16 with three loop/launch variants. Results go to $OUT.
# The limits (T_LR, T_MG, T_UNROLL seconds) add up to about 9 minutes: a fresh GPU
# machine spends most of each part building the random weights and compiling.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/lr_jax_bench}; mkdir -p "$OUT"
if [ -d .whl ]; then  # packages the GPU image lacks (ml_collections), carried as wheels
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
quiet() { grep -v -E '^(I|W)[0-9]{4} ' ; }
timeout "${T_LR:-240}" python3 -m lr_jax.bench --config configs/maskgit_imagenet256.py \
  --what edit,train --repeats 3 --json "$OUT/lr_bench.json" 2>&1 | quiet | tail -4
MG="python3 -m maskgit.bench --config imagenet256 --ks 8,28 --dtype bfloat16 --repeats 10 --noseparate"
echo "== maskgit bf16, loop"; timeout "${T_MG:-80}" $MG --json "$OUT/mg_loop.json" 2>&1 | quiet | tail -3
echo "== maskgit bf16, loop + command buffers for while loops"
XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL timeout "${T_MG:-80}" $MG \
  --json "$OUT/mg_cmdbuf.json" 2>&1 | quiet | tail -3
echo "== maskgit bf16, unrolled"; timeout "${T_UNROLL:-150}" $MG --unroll --json "$OUT/mg_unroll.json" 2>&1 | quiet | tail -3
