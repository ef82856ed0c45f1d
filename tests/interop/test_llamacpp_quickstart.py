# side-environment: llamacpp  (tests/interop/CMakeLists.txt: .venv-llamacpp ahead of .venv on PYTHONPATH)
"""llama.cpp itself (llama-cpp-python, .venv-llamacpp) runs llmft's GGUF export of
a fine-tuned SmolLM2-135M-Instruct: the quickstart's task and LoRA config,
trained through the binary (12 steps rather than the quickstart's 40, so the
test stays within a few minutes on 2 cores; it still learns the format),
exported with `llmft export --gguf --type f16` and `--type q8_0`, and run on
the first of the quickstart's 50 held-out conversations (GREEDY and HELDOUT
below: llama.cpp decodes one token at a time from Python here, and the test
must stay within a few minutes on 2 shared cores).

- f16: llama.cpp's greedy decoding (its sampler at temperature 0) from
  llmft's prompt ids gives exactly the tokens `llmft generate --batch` gives
  from the merged export stored in f16 (the same rounded weights; llmft
  computes in f32, llama.cpp's CPU matmul rounds activations to f16, and the
  fine-tuned answers are confident enough that no greedy choice flips). And
  llama.cpp's own rendering of the GGUF's tokenizer.chat_template, tokenized
  by its own tokenizer from the tokenizer.ggml.* keys, gives llmft's prompt
  ids.
- q8_0: llama.cpp as a user runs it (create_chat_completion: the chat template
  from the GGUF, its tokenizer, greedy decoding to the end of turn, its
  detokenizer) keeps the held-out exact match >= 80%. Control: the base
  model, exported the same way, scores below that on the same check, so the
  check can fail.
"""

import json
import os
import subprocess
import time
import unittest
from pathlib import Path

import llama_cpp

from interop_common import ARGS, WORK_DIR, convert_smollm2, main, run_llmft

# LLMFT_LLAMACPP_FULL=1 (bench/run_llamacpp_quickstart.sh) makes it the quickstart
# itself: 2,000 training conversations, its 40 steps, and every one of the 50
# held-out conversations for both checks.
FULL = os.environ.get("LLMFT_LLAMACPP_FULL") == "1"
TRAIN_RECORDS = 2000 if FULL else 200
TRAIN_STEPS = 40 if FULL else 12
HELDOUT = 50 if FULL else 20  # of the quickstart's 50, for the exact match
GREEDY = 50 if FULL else 5  # of those, for the token-by-token comparison
MAX_NEW_TOKENS = 32  # as scripts/quickstart: the answers take 23-28 tokens with the end of turn
EXACT_MATCH_FLOOR = 0.8
CONTROL_PROMPTS = 2


def quickstart_task_binary() -> str:
    """examples/quickstart_task in the build tree that holds llmft (build/launch/llmft)."""
    return str(Path(ARGS.llmft).resolve().parents[1] / "examples" / "quickstart_task")


def load_llama(path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, n_batch=256, seed=0, verbose=False)


def llamacpp_greedy(llm: llama_cpp.Llama, prompt_ids: list[int]) -> list[int]:
    """llama.cpp's greedy decoding from `prompt_ids`, the end-of-generation token kept (as llmft keeps it)."""
    generated = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        generated.append(token)
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(generated) == MAX_NEW_TOKENS:
            break
    return generated


def llamacpp_prompt_ids(llm: llama_cpp.Llama, messages: list[dict]) -> list[int]:
    """The prompt as create_chat_completion makes it: the GGUF's chat template, llama.cpp's tokenizer."""
    model = llm._model
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token=model.token_get_text(llm.token_eos()),
        bos_token=model.token_get_text(llm.token_bos()))
    rendered = formatter(messages=messages)
    return llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special, special=True)


def exact_match(llm: llama_cpp.Llama, heldout: list[dict]) -> int:
    """Held-out conversations llama.cpp answers exactly (after trimming whitespace, as `llmft generate --batch`)."""
    matches = 0
    for item in heldout:
        reply = llm.create_chat_completion(messages=item["messages"], temperature=0.0, top_k=1,
                                           repeat_penalty=1.0, max_tokens=MAX_NEW_TOKENS, seed=0)
        matches += reply["choices"][0]["message"]["content"].strip() == item["expected"].strip()
    return matches


class LlamaCppQuickstartTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start = time.monotonic()
        cls.base_dir = convert_smollm2("f32")
        task_dir, data_dir, run_dir = WORK_DIR / "task", WORK_DIR / "data", WORK_DIR / "run"
        subprocess.run([quickstart_task_binary(), "make", "--out", str(task_dir), "--train", str(TRAIN_RECORDS), "--heldout", "50",
                        "--seed", "1"], check=True, capture_output=True)
        run_llmft("data", "build", "--input", str(task_dir / "train.jsonl"), "--format", "messages", "--tokenizer",
                  str(cls.base_dir), "--output", str(data_dir / "train"), "--shards", "1", "--seq-len", "96")
        # examples/quickstart/quickstart.pbtxt, with fewer steps (warmup 2 of 12) and no evaluation.
        config = WORK_DIR / "run.pbtxt"
        config.write_text(f"""
model {{ hf_dir: "{cls.base_dir}" weights_dtype: FLOAT32 }}
peft {{ lora {{ r: 8 alpha: 16 dropout: 0.0 target_modules: ["all-linear"] }} }}
data {{ train_files: "{data_dir}/train-00000-of-00001.tfrecord" seq_len: 96 batch_mode: PADDED batch_size: 4
        shuffle_buffer: 256 seed: 1 }}
optimizer {{ lr: 1e-3 weight_decay: 0.0 max_grad_norm: 1.0 }}
schedule {{ kind: COSINE warmup_steps: 2 min_lr_ratio: 0.1 total_steps: {TRAIN_STEPS} }}
checkpoint {{ dir: "{run_dir}/checkpoints" keep_last: 1 }}
""")
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        run_llmft("train", "--config", str(config), "--threads", "2")
        cls.merged_f16 = WORK_DIR / "merged-f16"
        cls.gguf_f16, cls.gguf_q8_0 = WORK_DIR / "model-f16.gguf", WORK_DIR / "model-q8_0.gguf"
        run_llmft("export", "--config", str(config), "--merged", str(cls.merged_f16), "--dtype", "f16",
                  "--gguf", str(cls.gguf_f16), "--type", "f16")
        run_llmft("export", "--config", str(config), "--gguf", str(cls.gguf_q8_0), "--type", "q8_0")
        cls.base_q8_0 = WORK_DIR / "base-q8_0.gguf"
        run_llmft("convert", "--to-gguf", str(cls.base_dir), "--out", str(cls.base_q8_0), "--type", "q8_0")
        cls.heldout = [json.loads(line) for line in (task_dir / "heldout.jsonl").read_text().splitlines() if line]
        cls.heldout = cls.heldout[:HELDOUT]
        batch, batch_output = WORK_DIR / "heldout.jsonl", WORK_DIR / "llmft-generations.jsonl"
        batch.write_text("".join(json.dumps(item) + "\n" for item in cls.heldout[:GREEDY]))
        cls.llmft_summary = run_llmft("generate", "--model", str(cls.merged_f16), "--batch", str(batch),
                                      "--batch-output", str(batch_output), "--show", "0", "--max-new-tokens",
                                      str(MAX_NEW_TOKENS), "--threads", "2").stdout
        cls.llmft = [json.loads(line) for line in batch_output.read_text().splitlines() if line]
        print(f"fine-tune ({TRAIN_STEPS} steps), exports and llmft generate: {time.monotonic() - start:.0f} s")

    def test_f16_greedy_tokens_equal_llmft_generate(self):
        start = time.monotonic()
        llm = load_llama(self.gguf_f16)
        for item, ours in zip(self.heldout[:GREEDY], self.llmft, strict=True):
            with self.subTest(prompt=ours["prompt"]):
                self.assertEqual(llamacpp_prompt_ids(llm, item["messages"]), ours["prompt_ids"],
                                 "llama.cpp's chat template and tokenizer from the GGUF")
                self.assertEqual(llamacpp_greedy(llm, ours["prompt_ids"]), ours["generated_ids"])
        stopped = sum(line["stopped"] for line in self.llmft)
        print(f"llama.cpp (f16 GGUF) and llmft generate: the same prompt ids and greedy tokens on {len(self.llmft)} "
              f"held-out conversations ({stopped} ended by themselves; {time.monotonic() - start:.0f} s); llmft: "
              f"{self.llmft_summary.splitlines()[0]}")
        self.assertGreater(stopped, 0, "the answers must end at the end of turn for the end to be compared")

    def test_q8_0_keeps_the_heldout_exact_match(self):
        start = time.monotonic()
        matches = exact_match(load_llama(self.gguf_q8_0), self.heldout)
        print(f"llama.cpp, q8_0 GGUF of the fine-tuned model: held-out exact match {matches}/{len(self.heldout)} "
              f"({time.monotonic() - start:.0f} s)")
        self.assertGreaterEqual(matches, EXACT_MATCH_FLOOR * len(self.heldout))
        # Control: the base model fails the same check.
        control = exact_match(load_llama(self.base_q8_0), self.heldout[:CONTROL_PROMPTS])
        print(f"control, q8_0 GGUF of the base model: {control}/{CONTROL_PROMPTS}")
        self.assertLess(control, EXACT_MATCH_FLOOR * CONTROL_PROMPTS)


if __name__ == "__main__":
    main()
