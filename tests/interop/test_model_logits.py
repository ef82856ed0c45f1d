"""llmft's own Llama forward (LlamaModel, CPU f32, run by the llmft_logits test
peer) on the directory `llmft convert` makes from the real SmolLM2 GGUF gives
the same logits as transformers' LlamaForCausalLM on that directory.

Tolerance: 2e-3 absolute on logits of magnitude up to ~40 (both compute in f32
but with different GEMM blocking and reduction orders; measured ~1e-4), and the
same arg-max token wherever transformers' top two differ by more than 1e-2.
"""

import os
import subprocess
import unittest

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interop_common import WORK_DIR, convert_smollm2, main

LOGIT_TOLERANCE = 2e-3
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Ünïcödé, 日本語, emoji 😀 and digits 12345.",
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def llmft_logits(directory, ids) -> np.ndarray:
    out = WORK_DIR / "logits.f32"
    subprocess.run([os.environ["LLMFT_LOGITS"], str(directory), str(out), *map(str, ids)], check=True,
                   capture_output=True, text=True)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


class ModelLogitsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        cls.directory = convert_smollm2("f32")
        cls.tokenizer = AutoTokenizer.from_pretrained(cls.directory)
        cls.model = AutoModelForCausalLM.from_pretrained(cls.directory, dtype=torch.float32).eval()

    def compare(self, ids, label):
        ours = llmft_logits(self.directory, ids)
        with torch.no_grad():
            theirs = self.model(torch.tensor([ids])).logits[0].numpy()
        self.assertEqual(ours.shape, theirs.shape, label)
        difference = float(np.abs(ours - theirs).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, label)
        top2 = np.sort(theirs, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-2
        np.testing.assert_array_equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear], label)
        return difference

    def test_prompts_and_chat(self):
        worst = 0.0
        for prompt in PROMPTS:
            worst = max(worst, self.compare(self.tokenizer(prompt).input_ids, prompt))
        chat_ids = self.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]
        worst = max(worst, self.compare(list(chat_ids), "chat"))
        print(f"largest logit difference llmft vs transformers: {worst:.3g} (tolerance {LOGIT_TOLERANCE})")


if __name__ == "__main__":
    main()
