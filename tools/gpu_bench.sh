#!/usr/bin/env bash
# The GPU benchmarks of one device session, in one call of about 9 minutes, most
# important first, each part under its own time limit (seconds, overridable):
#   1. MaskGIT batched editing, float32 and bfloat16, K=8 and 28 (the 3x-speed target).
#   2. The same, bfloat16, part by part (encoder, transformer pass, loop, decoder).
#   3. bfloat16 with XLA command buffers for while loops, then with the loop unrolled.
#   4. lr_jax's full-size inference and train step.
#   5. The editors side by side (MaskGIT and aMUSEd-256, 12 steps), N = 1, 4, 8, 28 boxes in
#      one call vs N one-box calls, float32 and bfloat16.
#   6. lr_jax's full-size search (K x M = 28 candidates) over all GPUs of this host, 1 and
#      N devices (on a one-GPU machine only the 1-device row), then with the memory cap of
#      8 candidates per device at once (`infer.max_edits_per_device`); up to 3 minutes,
#      T_DEVICES=0 skips it.
#   7. Only with SD=1 (it needs about 5 more minutes, past one 10-minute call; alone:
#      `python3 tools/sd_gpu_bench.py --json $OUT/sd.json`): SD-1.5-inpainting inpainting
#      (random weights, 512 px, guidance 7.5, DDIM), bfloat16 with cuDNN attention,
#      50 and 25 steps, N = 1, 8, 28 masks per call.
# Results (JSON) go to $OUT. The GPU image lacks ml_collections: carry its wheel,
#   pip download --no-deps ml_collections==1.1.0 -d .whl
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/lr_jax_bench}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
quiet() { grep -v -E '^(I|W)[0-9]{4} ' ; }
MG="python3 -m maskgit.bench --config imagenet256 --ks 8,28 --repeats 10 --noseparate"
echo "== 1. maskgit, float32 and bfloat16"
timeout "${T_BASE:-150}" $MG --dtype float32,bfloat16 --json "$OUT/mg_base.json" 2>&1 | quiet | tail -6
echo "== 2. maskgit bfloat16, part by part"
timeout "${T_PARTS:-100}" $MG --dtype bfloat16 --breakdown 2>&1 | quiet | tail -16
echo "== 3a. maskgit bfloat16, command buffers for while loops"
XLA_FLAGS=--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL timeout "${T_CMDBUF:-70}" \
  $MG --dtype bfloat16 --json "$OUT/mg_cmdbuf.json" 2>&1 | quiet | tail -3
echo "== 3b. maskgit bfloat16, unrolled loop"
timeout "${T_UNROLL:-110}" $MG --dtype bfloat16 --unroll --json "$OUT/mg_unroll.json" 2>&1 \
  | quiet | tail -3
echo "== 4. lr_jax, ImageNet-256 sizes"
timeout "${T_LR:-120}" python3 -m lr_jax.bench --config configs/maskgit_imagenet256.py \
  --what edit,train --repeats 3 --json "$OUT/lr_bench.json" 2>&1 | quiet | tail -4
echo "== 5. editors: maskgit and amused, N boxes in one call vs N calls"
timeout "${T_EDITORS:-240}" python3 -m lr_jax.editor_bench --editors "${EDITORS:-maskgit,amused}" \
  --ns 1,4,8,28 --dtypes float32,bfloat16 --repeats 5 --json "$OUT/editors.json" 2>&1 \
  | quiet | tail -18
echo "== 6. lr_jax search over this host's GPUs, all candidates at once, then 8 per device"
NGPU=$(nvidia-smi -L | wc -l)
for CAP in 0 8; do
  [ "${T_DEVICES:-90}" = 0 ] && break
  timeout "${T_DEVICES:-90}" python3 -m lr_jax.bench --config configs/maskgit_imagenet256.py \
    --what search --devices "$NGPU" --repeats 3 --config.infer.max_edits_per_device=$CAP \
    --json "$OUT/lr_devices_cap$CAP.json" 2>&1 | quiet | tail -5
done
if [ -n "${SD:-}" ]; then
  echo "== 7. stable diffusion inpainting, bfloat16, 50 and 25 steps, N = 1, 8, 28"
  timeout "${T_SD:-330}" python3 tools/sd_gpu_bench.py --models sd15 --ns 1,8,28 \
    --steps 50,25 --dtype bfloat16 --repeats 2 --json "$OUT/sd.json" 2>&1 | quiet | tail -8
fi
