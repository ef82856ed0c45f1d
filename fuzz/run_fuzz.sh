#!/bin/sh
# Builds fuzz/ with clang as a separate small project and runs the TFRecord /
# tf.Example fuzz target for a bounded time on the committed fixtures as seed
# corpus. Fails (never skips) when clang or libFuzzer is missing, or when the
# fuzzer finds a crash (the reproducer is left in BUILD_DIR).
# Usage: fuzz/run_fuzz.sh SOURCE_DIR BUILD_DIR [SECONDS]
set -eu
source_dir=$1
build_dir=$2
seconds=${3:-20}

cxx=${LLMFT_FUZZ_CXX:-}
[ -n "$cxx" ] || cxx=$(command -v clang++-14 || command -v clang++ || true)
if [ -z "$cxx" ]; then
  echo "run_fuzz: no clang++ found; the fuzz test needs clang-14 and libclang-rt-14-dev (libFuzzer)" >&2
  exit 1
fi

cmake -S "$source_dir/fuzz" -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  > "$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log" >&2; exit 1; }
ninja -C "$build_dir" tfrecord_fuzz

corpus="$build_dir/corpus"
rm -rf "$corpus"
mkdir -p "$corpus"
cp "$source_dir"/tests/testdata/data/*.tfrecord "$source_dir"/tests/testdata/data/*.gz "$corpus"/
"$build_dir/tfrecord_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix="$build_dir/" -print_final_stats=1 "$corpus"
