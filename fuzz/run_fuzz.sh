#!/bin/sh
# Builds fuzz/ with clang as a separate small project and runs one fuzz target
# for a bounded time on its seed corpus, under libFuzzer's memory and time
# limits. Fails (never skips) when clang or libFuzzer is missing, or when the
# fuzzer finds a crash, a leak, an input slower than -timeout or one that takes
# more than -rss_limit_mb (the reproducer is left in BUILD_DIR).
# Usage: fuzz/run_fuzz.sh SOURCE_DIR BUILD_DIR [SECONDS] [TARGET]
#   TARGET tfrecord_fuzz (default): the TFRecord reader and tf.Example decoder,
#     seeded with the committed TFRecord fixtures.
#   TARGET chat_template_fuzz: the chat-template engine, seeded with real
#     templates (fuzz/corpus/chat_template/: SmolLM2, Llama 3, Mistral,
#     Qwen2.5, Gemma, Phi-3, ChatML, the interop tests' own) and a few hostile
#     ones; 2 s and 512 MB per input, far above what its reduced limits allow.
set -eu
source_dir=$1
build_dir=$2
seconds=${3:-20}
target=${4:-tfrecord_fuzz}

cxx=${LLMFT_FUZZ_CXX:-}
[ -n "$cxx" ] || cxx=$(command -v clang++-14 || command -v clang++ || true)
if [ -z "$cxx" ]; then
  echo "run_fuzz: no clang++ found; the fuzz test needs clang-14 and libclang-rt-14-dev (libFuzzer)" >&2
  exit 1
fi

cmake -S "$source_dir/fuzz" -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  > "$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log" >&2; exit 1; }
cmake --build "$build_dir" --target "$target"  # CMAKE_BUILD_PARALLEL_LEVEL sets the jobs

corpus="$build_dir/corpus-$target"
rm -rf "$corpus"
mkdir -p "$corpus"
case $target in
  tfrecord_fuzz)
    cp "$source_dir"/tests/testdata/data/*.tfrecord "$source_dir"/tests/testdata/data/*.gz "$corpus"/
    limits="-timeout=10 -rss_limit_mb=2048 -max_len=65536" ;;
  chat_template_fuzz)
    cp "$source_dir"/fuzz/corpus/chat_template/* "$corpus"/
    # A small ASan quarantine, so that freed memory does not count toward the RSS limit.
    ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=16}
    export ASAN_OPTIONS
    limits="-timeout=2 -rss_limit_mb=512 -max_len=8192" ;;
  *)
    echo "run_fuzz: unknown target '$target' (expected tfrecord_fuzz or chat_template_fuzz)" >&2
    exit 1 ;;
esac
# shellcheck disable=SC2086  # $limits is a list of options
"$build_dir/$target" -max_total_time="$seconds" $limits -artifact_prefix="$build_dir/" -print_final_stats=1 "$corpus"
