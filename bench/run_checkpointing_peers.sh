#!/usr/bin/env bash
# Activation checkpointing on this CPU, llmft next to PyTorch 2 + PEFT: step
# time and the peak memory a training step adds above what stays resident
# (activations and scratch) for NONE / SELECTIVE / FULL, LoRA r 8 on every
# linear, the small Llama at seq 1024 (batch 2) and SmolLM2-135M at seq 1024
# (batch 1), fp32 and bf16 (llmft: bf16 weights and activations with fp32
# masters; PyTorch: torch.autocast("cpu", bfloat16), small Llama only: it
# runs at ~5 tokens/s on SmolLM2 on an AVX2 CPU). The modes:
#   llmft   lora_train_bench --recompute none|selective|full (ActivationPolicy)
#   PyTorch peft_peer.py --checkpointing none|selective|full: transformers'
#           non-reentrant gradient checkpointing per decoder layer; selective
#           with PyTorch's selective activation checkpointing saving matmul and
#           attention outputs (peft_peer.py selective_checkpoint_context).
# Memory: llmft's allocator peak above its bytes in use at the step's start;
# PyTorch's peak RSS above the RSS at the step's start, from separate
# --memory-pass runs in which glibc returns every large block (peft_peer.py).
# Prints the RESULT lines with the 1-minute load average before each run.
# usage: bench/run_checkpointing_peers.sh [BUILD_DIR (default build)] [SMOLLM2_DIR (default models/smollm2)]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
smollm2=${2:-models/smollm2}
python=.venv/bin/python
[[ -x $build/bench/lora_train_bench ]] || { echo "run_checkpointing_peers: no $build/bench/lora_train_bench (build first)" >&2; exit 1; }
[[ -f $smollm2/config.json ]] || { echo "run_checkpointing_peers: no $smollm2 (llmft convert --gguf \"\$(scripts/smollm2-path)\" --out $smollm2)" >&2; exit 1; }
export OMP_NUM_THREADS=2
run() {  # LABEL COMMAND...
  echo "== $1 (load $(cut -d' ' -f1 /proc/loadavg))"
  "${@:2}" 2>&1 | grep RESULT
}
for mode in none selective full; do
  for dtype in f32 bf16; do
    run "llmft small-lora $mode $dtype" "$build/bench/lora_train_bench" --config small-lora --seq 1024 --batch 2 \
      --warmup 1 --steps 4 --recompute "$mode" --dtype "$dtype"
    run "llmft smollm2-lora $mode $dtype" "$build/bench/lora_train_bench" --config smollm2-lora --model "$smollm2" \
      --seq 1024 --batch 1 --warmup 1 --steps 2 --recompute "$mode" --dtype "$dtype"
  done
  run "pytorch small-lora $mode f32" "$python" bench/peft_peer.py --config small-lora --seq 1024 --batch 2 \
    --warmup 1 --steps 4 --checkpointing "$mode"
  run "pytorch smollm2-lora $mode f32" "$python" bench/peft_peer.py --config smollm2-lora --model "$smollm2" \
    --seq 1024 --batch 1 --warmup 1 --steps 2 --checkpointing "$mode"
  run "pytorch small-lora $mode bf16" "$python" bench/peft_peer.py --config small-lora --seq 1024 --batch 2 \
    --warmup 1 --steps 2 --checkpointing "$mode" --autocast bf16
  # PyTorch's memory from runs of their own (--memory-pass: exact RSS, slower steps).
  run "pytorch small-lora $mode f32 memory" "$python" bench/peft_peer.py --config small-lora --seq 1024 --batch 2 \
    --warmup 1 --steps 1 --checkpointing "$mode" --memory-pass
  run "pytorch smollm2-lora $mode f32 memory" "$python" bench/peft_peer.py --config smollm2-lora --model "$smollm2" \
    --seq 1024 --batch 1 --warmup 1 --steps 1 --checkpointing "$mode" --memory-pass
  run "pytorch small-lora $mode bf16 memory" "$python" bench/peft_peer.py --config small-lora --seq 1024 --batch 2 \
    --warmup 1 --steps 1 --checkpointing "$mode" --autocast bf16 --memory-pass
done
