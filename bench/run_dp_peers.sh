#!/usr/bin/env bash
# llmft data parallelism vs PyTorch DistributedDataParallel on this CPU, in one
# run: complete training steps of the small Llama (small-lora, small-full) on
# N ranks of this machine, each rank with its own batch of B x T tokens and
# --threads threads, gradients all-reduced every step. llmft's side is
# bench/dp_train_bench under mpirun; the peer is bench/ddp_peer.py (gloo,
# spawned processes; its docstring says exactly what it runs and which token
# ids each rank takes). For each configuration and world size the two sides
# run back to back, and the order alternates between rounds (llmft first
# in odd rounds, DDP first in even ones), so a load change on the shared
# machine hits both.
#
# Prints every run's output, the load average before each run, and one table:
# per configuration and world size the step time of both sides (median of the
# rounds' medians, best of the rounds' bests), the ratio llmft / DDP of the
# median step times (target <= 1.1), llmft's tokens/s per rank, the share of
# llmft's all-reduce time hidden behind backward compute, the bytes
# all-reduced per step, and each side's weak-scaling efficiency: step time at
# world 1 / step time at world N, whose limit 1.00 means the all-reduce costs
# nothing (with one rank per core, cores sharing memory bandwidth also lower it).
#
# usage: bench/run_dp_peers.sh [--build DIR] [--configs "small-lora small-full"] [--worlds "1 2"]
#                              [--batch 4] [--seq 256] [--warmup 2] [--steps 10] [--threads 1]
#                              [--rounds 1] [--bucket-mb MB]
#   --build DIR    where bench/dp_train_bench is built (default build-bench)
#   --threads N    threads per rank on both sides (OMP_NUM_THREADS, torch.set_num_threads)
#   --bucket-mb MB the peer's DDP bucket_cap_mb (default: DDP's own, 25 MiB after a first bucket of 1 MiB)
# PYTHON=... overrides the peer's interpreter (default .venv/bin/python, from scripts/setup).
set -euo pipefail
cd "$(dirname "$0")/.."

build=build-bench
configs="small-lora small-full"
worlds="1 2"
batch=4
seq=256
warmup=2
steps=10
threads=1
rounds=1
bucket_mb=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --worlds) worlds=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --bucket-mb) bucket_mb=$2; shift 2 ;;
    *) echo "run_dp_peers.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for pair in "--batch:$batch" "--seq:$seq" "--steps:$steps" "--threads:$threads" "--rounds:$rounds"; do
  [[ ${pair#*:} =~ ^[1-9][0-9]*$ ]] || { echo "run_dp_peers.sh: ${pair%%:*}: expected an integer >= 1, found '${pair#*:}'" >&2; exit 2; }
done
[[ $warmup =~ ^[0-9]+$ ]] || { echo "run_dp_peers.sh: --warmup: expected an integer >= 0, found '$warmup'" >&2; exit 2; }
for world in $worlds; do
  [[ $world =~ ^[1-9][0-9]*$ ]] || { echo "run_dp_peers.sh: --worlds: expected integers >= 1, found '$world'" >&2; exit 2; }
done

bench_bin=$build/bench/dp_train_bench
python=${PYTHON:-.venv/bin/python}
[[ -x $bench_bin ]] || { echo "run_dp_peers.sh: $bench_bin not built (ninja -C $build dp_train_bench)" >&2; exit 2; }
[[ -x $python ]] || { echo "run_dp_peers.sh: no $python: run scripts/setup (or PYTHON=...)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "run_dp_peers.sh: no mpirun on PATH (Open MPI)" >&2; exit 2; }

results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "run_dp_peers: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), rounds $rounds"
echo "per rank: batch $batch x seq $seq, $threads thread(s); $warmup warm-up + $steps timed steps; $(mpirun --version 2>&1 | head -1)"
echo "environment: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-<unset>} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-<unset>}"

run_side() {  # side config world round
  local side=$1 config=$2 world=$3 round=$4 output
  local args=(--config "$config" --batch "$batch" --seq "$seq" --warmup "$warmup" --steps "$steps")
  echo "--- round $round, $side $config world $world; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  case $side in
    llmft)
      output=$(mpirun --oversubscribe --allow-run-as-root --bind-to none -np "$world" -x OMP_NUM_THREADS="$threads" \
                 "$bench_bin" "${args[@]}" --threads "$threads" 2>&1) || {
        echo "$output"; echo "run_dp_peers.sh: llmft failed: $config world $world" >&2; exit 1; } ;;
    ddp)
      [[ -n $bucket_mb ]] && args+=(--bucket-mb "$bucket_mb")
      output=$(OMP_NUM_THREADS=$threads "$python" bench/ddp_peer.py "${args[@]}" --world "$world" \
                 --threads-per-rank "$threads" 2>&1) || {
        echo "$output"; echo "run_dp_peers.sh: the DDP peer failed: $config world $world" >&2; exit 1; } ;;
  esac
  echo "$output"
  local count
  count=$(grep -c "^RESULT side=$side " <<<"$output" || true)
  [[ $count == 1 ]] || { echo "run_dp_peers.sh: $side $config world $world printed $count RESULT lines, expected 1" >&2; exit 1; }
  grep "^RESULT side=$side " <<<"$output" | sed "s/^RESULT /RESULT round=$round /" >>"$results"
}

for round in $(seq 1 "$rounds"); do
  for config in $configs; do
    for world in $worlds; do
      order="llmft ddp"
      (( round % 2 == 0 )) && order="ddp llmft"
      for side in $order; do run_side "$side" "$config" "$world" "$round"; done
    done
  done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

# Table: per (config, world, side) the median of the rounds' median step times
# and the best of their best ones; llmft's communication figures are the
# medians over the rounds.
awk -v configs="$configs" -v worlds="$worlds" '
  function field(name,   i, kv) { for (i = 1; i <= NF; ++i) { split($i, kv, "="); if (kv[1] == name) return kv[2] } return "" }
  function median(list,   n, values, i, j, t) {
    n = split(list, values, " ")
    if (n == 0) return ""
    for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (values[j] + 0 < values[i] + 0) { t = values[i]; values[i] = values[j]; values[j] = t }
    return n % 2 ? values[(n + 1) / 2] : (values[n / 2] + values[n / 2 + 1]) / 2
  }
  /^RESULT/ {
    key = field("config") SUBSEP field("world") SUBSEP field("side")
    medians[key] = medians[key] " " field("step_ms_median")
    if (!(key in best) || field("step_ms_best") + 0 < best[key]) best[key] = field("step_ms_best") + 0
    rank_rates[key] = rank_rates[key] " " field("tokens_per_s_rank")
    hidden[key] = hidden[key] " " field("hidden_fraction")
    exposed[key] = exposed[key] " " field("exposed_comm_ms")
    comm[key] = comm[key] " " field("comm_ms")
    bytes[key] = field("allreduce_bytes")
  }
  END {
    format = "%-11s %5s %17s %17s %20s %11s %16s %12s %16s %16s %22s\n"
    printf "\n" format, "config", "world", "llmft ms med/best", "DDP ms med/best", "llmft/DDP med (best)",
      "target<=1.1", "llmft tok/s/rank", "llmft hidden", "llmft exposed ms", "all-reduce bytes", "weak scaling llmft/DDP"
    n_configs = split(configs, config_list, " ")
    n_worlds = split(worlds, world_list, " ")
    for (c = 1; c <= n_configs; ++c) for (w = 1; w <= n_worlds; ++w) {
      config = config_list[c]; world = world_list[w]
      l = config SUBSEP world SUBSEP "llmft"; d = config SUBSEP world SUBSEP "ddp"
      l1 = config SUBSEP world_list[1] SUBSEP "llmft"; d1 = config SUBSEP world_list[1] SUBSEP "ddp"
      lm = median(medians[l]); dm = median(medians[d])
      ratio = sprintf("%.2fx (%.2fx)", lm / dm, best[l] / best[d])
      byte_text = bytes[l]
      # One llmft rank reduces nothing (0 bytes) where DDP still runs its reducer.
      if (world != 1 && bytes[l] != bytes[d]) byte_text = bytes[l] "!=" bytes[d]  # different gradients reduced
      scaling = "-"
      if (world_list[1] == 1 && world != 1) scaling = sprintf("%.2f / %.2f", median(medians[l1]) / lm, median(medians[d1]) / dm)
      printf format, config, world, sprintf("%.1f / %.1f", lm, best[l]), sprintf("%.1f / %.1f", dm, best[d]), ratio,
        (lm / dm <= 1.1 ? "met" : "not met"), sprintf("%.0f", median(rank_rates[l])),
        (median(comm[l]) > 0 ? sprintf("%.0f%%", 100 * median(hidden[l])) : "-"), sprintf("%.1f", median(exposed[l])),
        byte_text, scaling
    }
    printf "(step ms: median of the rounds\x27 median steps / best step of all rounds, on rank 0; target: llmft / DDP median step\n"
    printf " time <= 1.1; hidden: share of llmft\x27s all-reduce time under backward compute; weak scaling: step time at world %s /\n", world_list[1]
    printf " step time at world N, whose limit is 1.00)\n"
  }' "$results"
