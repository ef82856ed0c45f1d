#!/usr/bin/env bash
# The CPU's 16-bit GEMM paths on LoRA training steps (r 8, every linear):
# f32 (OpenBLAS SGEMM) against bf16 weights and activations (--dtype bf16) and
# bf16 base weights under f32 compute (--weights-dtype bf16), each with its
# 16-bit operands read as stored by the packed GEMM (kernels/cpu/packed_gemm.h)
# and widened into f32 copies for OpenBLAS (LLMFT_CPU_HALF_GEMM=packed|widen),
# for the small Llama and SmolLM2-135M (f32 operands take SGEMM either way);
# on CPUs with AVX512_BF16 also bf16 x bf16 through the VDPBF16PS pair tile
# (LLMFT_CPU_HALF_GEMM=bf16dot). The RESULT lines' gemm_path says which path
# the weights' products took.
# Runs alternate, ROUNDS rounds; prints
# one line per run with the 1-minute load average before it.
# usage: bench/run_half_gemm.sh [BUILD_DIR (default build)] [SMOLLM2_DIR (default models/smollm2)] [ROUNDS (default 3)]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
smollm2=${2:-models/smollm2}
rounds=${3:-3}
bench=$build/bench/lora_train_bench
[[ -x $bench ]] || { echo "run_half_gemm: no $bench (build first)" >&2; exit 1; }
[[ -f $smollm2/config.json ]] || { echo "run_half_gemm: no $smollm2 (llmft convert --gguf \"\$(scripts/smollm2-path)\" --out $smollm2)" >&2; exit 1; }
variants=("f32 packed" "bf16 widen" "bf16 packed" "bf16-weights widen" "bf16-weights packed")
grep -qw avx512_bf16 /proc/cpuinfo && variants+=("bf16 bf16dot")
for round in $(seq "$rounds"); do
  for config in small-lora smollm2-lora; do
    steps=(--steps 5 --warmup 2)
    [[ $config == smollm2-lora ]] && steps=(--steps 3 --warmup 1)
    for variant in "${variants[@]}"; do
      read -r dtype path <<<"$variant"
      if [[ $dtype == bf16-weights ]]; then precision=(--weights-dtype bf16); else precision=(--dtype "$dtype"); fi
      load=$(cut -d' ' -f1 /proc/loadavg)
      LLMFT_CPU_HALF_GEMM=$path "$bench" --config "$config" --model "$smollm2" "${steps[@]}" "${precision[@]}" 2>&1 |
        grep RESULT | sed "s/^/round=$round variant=$dtype:$path load=$load /"
    done
  done
done
