#!/bin/bash
# Builds tests/gpu/gpu_ops_test against the CPU emulation of the CUDA backend
# (README.md) and runs it. Usage: tests/gpu/emulate/run.sh [WORK_DIR] [gtest args...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="${1:-/tmp/llmft-cuda-emulator}"
shift || true
mkdir -p "$work/src" "$work/obj"
python3 "$here/rewrite_kernels.py" "$root/kernels/cuda" "$work/src"
flags=(-std=c++20 -O1 -fopenmp -DLLMFT_WITH_CUDA=1 -I"$here/include" -I"$root" -Wall -Wextra -Wno-unused-parameter)
objects=()
compile() {  # source [extra flags...]
  local object="$work/obj/$(echo "$1" | tr / _).o"
  objects+=("$object")
  g++ "${flags[@]}" "${@:2}" -c "$1" -o "$object" &
  while (( $(jobs -rp | wc -l) >= 2 )); do wait -n; done
}
for f in "$root"/core/{allocator,context,dtype,philox,tensor}.cc "$here/fake_backend.cc" "$root/kernels/ops.cc" \
         "$root"/kernels/cpu/*.cc "$root"/kernels/cuda/*.cc; do
  compile "$f"
done
for f in "$work"/src/*.cc; do compile "$f" -include "$here/shim.h" -Wno-unknown-pragmas -Wno-unused-variable; done
compile "$root/tests/gpu/gpu_ops_test.cc" -DGTEST_HAS_PTHREAD=1
wait
g++ "${objects[@]}" -o "$work/gpu_ops_test" -lgtest -lgtest_main -lopenblas -fopenmp -lpthread
# tests/gpu/optim_gpu_test (AdamW with device state, clipping, loss scaler) on
# the same emulated backend: the kernel objects plus the optimizer sources.
kernel_objects=("${objects[@]:0:${#objects[@]}-1}")
objects=()
for f in "$root"/optim/{adamw,grad_clip,loss_scaler}.cc; do compile "$f"; done
compile "$root/tests/gpu/optim_gpu_test.cc" -DGTEST_HAS_PTHREAD=1
wait
g++ "${kernel_objects[@]}" "${objects[@]}" -o "$work/optim_gpu_test" -lgtest -lgtest_main -lopenblas -fopenmp -lpthread
"$work/gpu_ops_test" "$@"
"$work/optim_gpu_test" "$@"
