#!/bin/sh
# Builds fuzz/ with clang as a separate small project, and runs one fuzz
# target for a bounded time on its seed corpus, under libFuzzer's memory and
# time limits. Fails (never skips) when clang or libFuzzer is missing, or when
# the fuzzer finds a crash, a leak, an input slower than -timeout or one that
# takes more than -rss_limit_mb (the reproducer is left in BUILD_DIR as
# crash-*, leak-*, timeout-* or oom-*; reproduce with BUILD_DIR/TARGET FILE).
#
# Usage:
#   fuzz/run_fuzz.sh build SOURCE_DIR BUILD_DIR
#       configures and builds every target (ctest fuzz.build, the fixture the
#       fuzz.* tests share, so they do not race on one build directory).
#   fuzz/run_fuzz.sh run SOURCE_DIR BUILD_DIR TARGET SECONDS
#       runs TARGET for SECONDS on a fresh copy of its seeds. With
#       LLMFT_FUZZ_CORPUS=DIR, DIR is the corpus instead: seeded when empty,
#       kept between runs, so that long runs (scripts/fuzz) build on each other.
#
# Targets, their seeds (real files, trimmed to a few KB where they are large;
# fuzz/corpus/make_seeds.py made the trimmed ones) and limits per input:
#   tfrecord_fuzz         tests/testdata/data TFRecord shards            10 s, 2 GB
#   chat_template_fuzz    fuzz/corpus/chat_template: SmolLM2, Llama 3, Mistral,
#                         Qwen2.5, Gemma, Phi-3, ChatML templates and hostile ones
#                                                                          2 s, 512 MB
#   safetensors_fuzz      fuzz/corpus/safetensors: tests' tiny models' golden
#                         files, a sharded index                         5 s, 1 GB
#   gguf_fuzz             fuzz/corpus/gguf: SmolLM2's GGUF metadata and tensor
#                         table with arrays cut to 64 entries and tensors shrunk,
#                         and its first 16 KB as they are               5 s, 1 GB
#   config_fuzz           examples/*.pbtxt and fuzz/corpus/config (with --set lines)
#                                                                          5 s, 1 GB
#   tokenizer_fuzz        fuzz/corpus/tokenizer: byte-fallback, Metaspace and a
#                         trimmed SmolLM2 tokenizer.json with texts; texts alone
#                                                                         10 s, 2 GB
#   checkpoint_fuzz       the state.json CheckpointWriter writes, and one from a
#                         tiny training run                              5 s, 1 GB
#   dataset_builder_fuzz  tests/testdata/tokenizer JSONL and fuzz/corpus/dataset_builder
#                         (each --format)                               10 s, 2 GB
set -eu
mode=${1:?"usage: run_fuzz.sh build|run SOURCE_DIR BUILD_DIR [TARGET SECONDS]"}
source_dir=$2
build_dir=$3

if [ "$mode" = build ]; then
  cxx=${LLMFT_FUZZ_CXX:-}
  [ -n "$cxx" ] || cxx=$(command -v clang++-14 || command -v clang++ || true)
  cc=$(command -v clang-14 || command -v clang || true)
  if [ -z "$cxx" ] || [ -z "$cc" ]; then
    echo "run_fuzz: no clang/clang++ found; the fuzz tests need clang-14 and libclang-rt-14-dev (libFuzzer)" >&2
    exit 1
  fi
  mkdir -p "$build_dir"
  cmake -S "$source_dir/fuzz" -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$build_dir/configure.log" 2>&1 || { cat "$build_dir/configure.log" >&2; exit 1; }
  exec cmake --build "$build_dir"  # CMAKE_BUILD_PARALLEL_LEVEL sets the jobs
fi
[ "$mode" = run ] || { echo "run_fuzz: unknown mode '$mode' (expected build or run)" >&2; exit 1; }
target=${4:?"run_fuzz: run needs TARGET SECONDS"}
seconds=${5:?"run_fuzz: run needs TARGET SECONDS"}
if [ ! -x "$build_dir/$target" ]; then
  echo "run_fuzz: $build_dir/$target is not built (run_fuzz.sh build $source_dir $build_dir)" >&2
  exit 1
fi

seed() {  # copies the seeds of $target into $1
  case $target in
    tfrecord_fuzz) cp "$source_dir"/tests/testdata/data/*.tfrecord "$source_dir"/tests/testdata/data/*.gz "$1"/ ;;
    config_fuzz) cp "$source_dir"/examples/*.pbtxt "$source_dir"/fuzz/corpus/config/* "$1"/ ;;
    safetensors_fuzz)
      cp "$source_dir"/fuzz/corpus/safetensors/* "$1"/
      for golden in "$source_dir"/tests/testdata/model/*/golden.safetensors; do
        cp "$golden" "$1/$(basename "$(dirname "$golden")").safetensors"
      done ;;
    dataset_builder_fuzz)
      cp "$source_dir"/tests/testdata/tokenizer/*.jsonl "$source_dir"/fuzz/corpus/dataset_builder/* "$1"/ ;;
    *) cp "$source_dir/fuzz/corpus/${target%_fuzz}"/* "$1"/ ;;
  esac
}

# Per input: seconds, resident MB, input bytes. The bounds sit far above what a
# seed takes, so that only a blow-up reaches them.
case $target in
  tfrecord_fuzz) limits="-timeout=10 -rss_limit_mb=2048 -max_len=65536" ;;
  chat_template_fuzz) limits="-timeout=2 -rss_limit_mb=512 -max_len=8192" ;;
  safetensors_fuzz | config_fuzz) limits="-timeout=5 -rss_limit_mb=1024 -max_len=16384" ;;
  gguf_fuzz) limits="-timeout=5 -rss_limit_mb=1024 -max_len=65536" ;;
  checkpoint_fuzz) limits="-timeout=5 -rss_limit_mb=1024 -max_len=8192" ;;
  tokenizer_fuzz) limits="-timeout=10 -rss_limit_mb=2048 -max_len=131072" ;;
  dataset_builder_fuzz) limits="-timeout=10 -rss_limit_mb=2048 -max_len=8192" ;;
  *) echo "run_fuzz: unknown target '$target'" >&2; exit 1 ;;
esac

if [ -n "${LLMFT_FUZZ_CORPUS:-}" ]; then
  corpus=$LLMFT_FUZZ_CORPUS
  mkdir -p "$corpus"
  [ -n "$(ls -A "$corpus")" ] || seed "$corpus"
  seed_option=""  # long runs (scripts/fuzz): libFuzzer's random seed, new paths every time
else
  corpus="$build_dir/corpus-$target"
  rm -rf "$corpus"
  mkdir -p "$corpus"
  seed "$corpus"
  # ctest (CI): a fixed seed, so that a run explores the same inputs in the
  # same order everywhere and a finding fails every run, not one CI run in
  # many. LLMFT_FUZZ_SEED picks another; new paths come from scripts/fuzz.
  seed_option="-seed=${LLMFT_FUZZ_SEED:-1}"
fi
# checkpoint_fuzz adds the state.json its writer makes at start-up.
LLMFT_FUZZ_SEED_DIR=$corpus
# A small ASan quarantine, so that freed memory does not count toward the RSS limit.
ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16}
export LLMFT_FUZZ_SEED_DIR ASAN_OPTIONS
# shellcheck disable=SC2086  # $limits is a list of options
exec "$build_dir/$target" -max_total_time="$seconds" $limits $seed_option -artifact_prefix="$build_dir/$target-" \
  -print_final_stats=1 "$corpus"
