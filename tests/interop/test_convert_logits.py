"""transformers loading the directory `llmft convert` makes from the real
SmolLM2 GGUF gives the same logits as transformers loading the GGUF itself
(`gguf_file=`, its own dequantizer and q/k un-permutation), and the same greedy
generations token for token.

Tolerance: both load the same dequantized f32 weights, so the logits are
expected to be identical; the test allows 1e-5 absolute (float32 round-off,
should a kernel ever be picked differently) and reports the largest difference.
"""

import unittest

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interop_common import convert_smollm2, main, smollm2_gguf_path

LOGIT_TOLERANCE = 1e-5
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away,",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "What is 12 + 30?"}],
]


class LogitsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        directory = convert_smollm2("f32")
        gguf = smollm2_gguf_path()
        cls.ours = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        cls.theirs = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32).eval()
        cls.tokenizer = AutoTokenizer.from_pretrained(directory)

    def test_weights_identical(self):
        ours, theirs = self.ours.state_dict(), self.theirs.state_dict()
        self.assertEqual(set(ours), set(theirs))
        for name in ours:
            self.assertTrue(torch.equal(ours[name], theirs[name]), name)

    def test_logits_match(self):
        worst = 0.0
        for prompt in PROMPTS:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                ours, theirs = self.ours(ids).logits, self.theirs(ids).logits
            difference = (ours - theirs).abs().max().item()
            worst = max(worst, difference)
            self.assertLessEqual(difference, LOGIT_TOLERANCE, prompt)
        print(f"largest logit difference {worst:.3g} (tolerance {LOGIT_TOLERANCE})")

    def test_greedy_chat_generations_agree(self):
        answers = []
        for chat in CHATS:
            ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)["input_ids"]
            with torch.no_grad():
                ours = self.ours.generate(ids, max_new_tokens=16, do_sample=False)
                theirs = self.theirs.generate(ids, max_new_tokens=16, do_sample=False)
            self.assertEqual(ours.tolist(), theirs.tolist(), chat)
            answers.append(self.tokenizer.decode(ours[0, ids.shape[1]:]))
            print(repr(answers[-1]))
        self.assertIn("Paris", answers[0])  # a real model: it knows the capital of France


if __name__ == "__main__":
    main()
