#!/usr/bin/env bash
# Every GPU measurement of the speed issue, in one run of at most 8 minutes,
# with a fixed list of batches. Writes JSON to ${OUT:-benchmarks/results/gpu}.
# Run on the lent GPU machine from the repository root, after installing the
# wheels it lacks (tensorflow-datasets, ml_collections; see benchmarks/README.md):
#
#   bash benchmarks/gpu_suite.sh
#
# Each part has its own time limit, so that one slow part cannot starve the
# others; a part that runs out leaves its error in the JSON, not a number.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 PYTHONUNBUFFERED=1  # torch shares the GPU
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
part() {  # NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" --out "$out/$name.json" 2> "$out/$name.log" \
    || echo "$name: exit $? (see $name.log)"
}
# 1. The train step at each side's best: ADM-64 in bf16 and float32 (TF32 on
#    both sides), JAX against the twin eager and compiled.
part train_adm64_bf16 120 python benchmarks/fair_train_speed.py --models adm64 \
  --precision bf16 --batch 64 --steps 5 --tf32 on
part train_adm64_bf16_cudnn 70 python benchmarks/fair_train_speed.py --models adm64 \
  --precision bf16 --batch 64 --steps 5 --tf32 on --sides jax --jax_attention cudnn
part train_adm64_tf32 90 python benchmarks/fair_train_speed.py --models adm64 \
  --precision f32 --batch 32 --steps 5 --tf32 on --sides jax,torch
part train_glide_bf16 60 python benchmarks/fair_train_speed.py --models glide_base \
  --precision bf16 --batch 32 --steps 5 --tf32 on
# 2. Sampling throughput: 100 DDPM steps with CFG at batch 64 and 256.
part sampling 90 python benchmarks/sampling_throughput.py --batches 64,256 --device cuda
# 3. The released models: a call's time and memory at full size.
part openai_models 50 python benchmarks/openai_models.py --kinds 64x64_diffusion,base,upsample
echo "done: $out"
