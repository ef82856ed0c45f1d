#!/usr/bin/env bash
# llama.cpp (llama-cpp-python, .venv-llamacpp) on the quickstart itself: the
# interop test tests/interop/test_llamacpp_quickstart.py with
# LLMFT_LLAMACPP_FULL=1, so the model is the quickstart's (2,000 training
# conversations, 40 steps, LoRA r 8 all-linear) and both checks run on all
# 50 held-out conversations: llama.cpp's greedy tokens from the f16 GGUF
# against `llmft generate` on the merged f16 export, and llama.cpp's
# held-out exact match with the q8_0 GGUF (create_chat_completion: the
# GGUF's chat template and tokenizer). The CI test runs the same code on a
# 12-step model and 20/5 conversations.
#
#   bench/run_llamacpp_quickstart.sh [BUILD_DIR]
#
# Needs scripts/setup's .venv and .venv-llamacpp, and BUILD_DIR (default
# build) with llmft and quickstart_task. Output: runs/llamacpp/ (work files) and
# the test's printed figures.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
side=.venv-llamacpp
[[ -f $side/.llmft-installed ]] || { echo "$side is missing: run scripts/setup" >&2; exit 1; }
mkdir -p runs/llamacpp
LLMFT_LLAMACPP_FULL=1 LLMFT_KEEP_WORK_DIR=1 OMP_NUM_THREADS=2 PYTHONPATH="$side" PYTHONDONTWRITEBYTECODE=1 \
  .venv/bin/python tests/interop/test_llamacpp_quickstart.py --llmft "$build_dir/launch/llmft" \
  --work-dir runs/llamacpp 2>&1 | tee runs/llamacpp/output.txt
