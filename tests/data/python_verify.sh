#!/bin/sh
# ctest: files written by llmft's TFRecord writer decode identically in the
# independent Python reader (tests/testdata/data/make_fixtures.py --verify).
# Needs Debian's /usr/bin/python3 with python3-protobuf and protoc
# (scripts/setup installs both); fails, never skips, when they are missing.
# Usage: python_verify.sh WRITER_BINARY SOURCE_DIR
set -eu
writer=$1
source_dir=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$writer" "$out"
for file in "$out"/ours.tfrecord "$out"/ours.tfrecord.gz "$out"/ours.tfrecord.zlib; do
  /usr/bin/python3 "$source_dir/tests/testdata/data/make_fixtures.py" --verify "$file" "$file.json"
done
