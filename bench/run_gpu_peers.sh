#!/usr/bin/env bash
# llmft vs PyTorch + PEFT LoRA training on one GPU, back to back: complete
# steps (zero grads, forward, backward, AdamW) of the TinyLlama-1.1B shape in
# bf16 at seq 2048 (bench/gpu_lora_bench.cc and bench/peft_peer.py say exactly
# what each runs and how FLOPs are counted). For each activation mode (all
# saved, then recomputed per block / gradient checkpointing) the two sides run
# one after the other with the same batch; then one table of tokens/s, MFU and
# peak memory with the ratio llmft / PyTorch.
#
# usage: bench/run_gpu_peers.sh [--build DIR] [--batch 8] [--recompute-batch 16] [--seq 2048]
#                               [--steps 10] [--warmup 2] [--attn sdpa|flash_attention_2]
#                               [--modes "saved recompute"] [--peak-tflops 989]
#        bench/run_gpu_peers.sh --smoke   # tiny shapes on the CPU: checks the plumbing only
# The default batches are a guess for 80 GB (about 1.3 MB of saved bf16
# activations per token at this shape in llmft; PyTorch saves more): raise
# them until either side runs out of memory, and keep both sides equal.
set -euo pipefail
cd "$(dirname "$0")/.."

build=build-cuda
batch=8
recompute_batch=16
seq=2048
steps=10
warmup=2
attn=sdpa
modes="saved recompute"
peak=989
config=tinyllama-1.1b
device=cuda
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --recompute-batch) recompute_batch=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --attn) attn=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --peak-tflops) peak=$2; shift 2 ;;
    --smoke) config=tiny; device=cpu; batch=2; recompute_batch=2; seq=32; steps=2; warmup=1; shift ;;
    *) echo "run_gpu_peers.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

bench_bin=$build/bench/gpu_lora_bench
python=${PYTHON:-.venv/bin/python}
[[ -x $bench_bin ]] || { echo "run_gpu_peers.sh: $bench_bin not built (cmake -DLLMFT_CUDA=ON; ninja -C $build gpu_lora_bench)" >&2; exit 2; }
[[ -x $python ]] || { echo "run_gpu_peers.sh: no $python (scripts/setup, or PYTHON=...)" >&2; exit 2; }
[[ $device == cpu ]] || nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader || true

results=()
for mode in $modes; do
  case "$mode" in
    saved) b=$batch; llmft_flag=(); peer_flag=() ;;
    recompute) b=$recompute_batch; llmft_flag=(--recompute); peer_flag=(--gradient-checkpointing) ;;
    *) echo "run_gpu_peers.sh: --modes takes saved and/or recompute, found '$mode'" >&2; exit 2 ;;
  esac
  echo "== $mode: batch $b x seq $seq"
  llmft_out=$("$bench_bin" --config $config --device $device --dtype bf16 --batch "$b" --seq "$seq" \
      --warmup "$warmup" --steps "$steps" --peak-tflops "$peak" "${llmft_flag[@]}" 2>&1) || {
    echo "$llmft_out"; echo "run_gpu_peers.sh: llmft failed in mode $mode (out of memory? lower the batch)" >&2; exit 1; }
  echo "$llmft_out"
  peer_out=$("$python" bench/peft_peer.py --config $config --device $device --dtype bf16 --batch "$b" --seq "$seq" \
      --warmup "$warmup" --steps "$steps" --attn "$attn" --peak-tflops "$peak" "${peer_flag[@]}" 2>&1) || {
    echo "$peer_out"; echo "run_gpu_peers.sh: the PyTorch peer failed in mode $mode" >&2; exit 1; }
  echo "$peer_out"
  results+=("$mode $b $(grep '^RESULT' <<<"$llmft_out") $(grep '^RESULT' <<<"$peer_out")")
done

# field KEY LINE: the value of KEY=... in a RESULT line.
field() { grep -o "$1=[^ ]*" <<<"$2" | head -1 | cut -d= -f2; }
echo
printf '%-10s %6s %14s %14s %7s %9s %9s %10s %10s\n' mode batch "llmft tok/s" "torch tok/s" ratio \
  "llmft MFU" "torch MFU" "llmft GiB" "torch GiB"
for row in "${results[@]}"; do
  mode=${row%% *}; rest=${row#* }; b=${rest%% *}
  llmft_line=$(grep -o 'side=llmft.*side=' <<<"$rest")
  peer_line=$(grep -o 'side=pytorch.*' <<<"$rest")
  lt=$(field tokens_per_s_best "$llmft_line"); pt=$(field tokens_per_s_best "$peer_line")
  lm=$(field mfu_best "$llmft_line"); pm=$(field mfu_best "$peer_line")
  lg=$(field peak_gib "$llmft_line"); pg=$(field peak_gib "$peer_line")
  awk -v mode="$mode" -v b="$b" -v lt="$lt" -v pt="$pt" -v lm="$lm" -v pm="$pm" -v lg="$lg" -v pg="$pg" 'BEGIN {
    printf "%-10s %6d %14.0f %14.0f %7.2f %8.1f%% %8.1f%% %10.2f %10.2f\n", mode, b, lt, pt, lt / pt, 100 * lm, 100 * pm, lg, pg }'
done
echo "(tokens/s: best step of $steps; MFU against $peak TFLOP/s, FLOPs as bench/gpu_lora_bench.cc; ratio = llmft / PyTorch)"
