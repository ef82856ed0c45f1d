"""`llmft generate --chat` (KV-cache greedy decoding) and transformers'
greedy `generate` on the directory `llmft convert` makes from the real SmolLM2
GGUF agree token for token on a set of chat prompts, and so do the prompt ids
(llmft's chat-template rendering + tokenizer against apply_chat_template).

Both stop at the same ids: eos_token_id of generation_config.json and the
end-of-turn token <|im_end|>. Token-for-token agreement holds as long as no
step has a near tie between the two best logits (the forward agrees with
transformers to ~1e-4, test_model_logits.py); the smallest top-2 gap seen in
transformers' run is printed so a failure can be told apart from a tie.
"""

import json
import unittest

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interop_common import convert_smollm2, main, run_llmft

MAX_NEW_TOKENS = 24
CHATS = [
    ("What is the capital of France?", None),
    ("Write a haiku about the sea.", None),
    ("What is 12 + 30?", "You are a calculator. Answer with a number."),
    ("Translate 'good morning' into Spanish.", None),
    ("def add(a, b):\n    # complete this Python function", "You are a coding assistant."),
    ("Name three primary colours.", ""),
]


def ids_of(line: str) -> list:
    return [int(token) for token in line.split()]


class GenerateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        cls.directory = convert_smollm2("f32")
        cls.model = AutoModelForCausalLM.from_pretrained(cls.directory, dtype=torch.float32).eval()
        cls.tokenizer = AutoTokenizer.from_pretrained(cls.directory)
        generation_config = json.loads((cls.directory / "generation_config.json").read_text())
        eos = generation_config["eos_token_id"]
        cls.stop_ids = sorted(set(eos if isinstance(eos, list) else [eos]) |
                              {cls.tokenizer.convert_tokens_to_ids("<|im_end|>")})

    def chat_args(self, prompt, system):
        args = ["--model", str(self.directory), "--chat", prompt, "--threads", "1"]
        if system is not None:
            args += ["--system", system]
        return args

    def messages(self, prompt, system):
        return ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": prompt}]

    def test_greedy_generations_agree_token_for_token(self):
        smallest_gap = float("inf")
        for prompt, system in CHATS:
            with self.subTest(prompt=prompt):
                theirs_prompt = self.tokenizer.apply_chat_template(
                    self.messages(prompt, system), add_generation_prompt=True, return_tensors="pt",
                    return_dict=True)["input_ids"]
                ours_prompt = ids_of(run_llmft("generate", *self.chat_args(prompt, system), "--render-only",
                                               "--print-ids").stdout)
                self.assertEqual(ours_prompt, theirs_prompt[0].tolist())

                with torch.no_grad():
                    output = self.model.generate(theirs_prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                                 eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[0],
                                                 output_scores=True, return_dict_in_generate=True)
                theirs = output.sequences[0, theirs_prompt.shape[1]:].tolist()
                for scores in output.scores:
                    top2 = scores[0].topk(2).values
                    smallest_gap = min(smallest_gap, (top2[0] - top2[1]).item())

                ours = ids_of(run_llmft("generate", *self.chat_args(prompt, system), "--print-ids",
                                        "--max-new-tokens", str(MAX_NEW_TOKENS)).stdout)
                self.assertEqual(ours, theirs, f"llmft: {self.tokenizer.decode(ours)!r}\n"
                                               f"transformers: {self.tokenizer.decode(theirs)!r}")
                print(f"{prompt!r}: {len(ours)} tokens: {self.tokenizer.decode(ours)!r}")
        print(f"smallest top-2 logit gap along transformers' greedy path: {smallest_gap:.3g}")

    def test_text_output_is_the_decoded_completion_and_stops_at_end_of_turn(self):
        result = run_llmft("generate", "--model", str(self.directory), "--chat", "What is the capital of France?",
                           "--max-new-tokens", "64")
        self.assertIn("Paris", result.stdout)
        self.assertNotIn("<|im_end|>", result.stdout)
        self.assertIn("stopped at EOS", result.stderr)

    def test_seeded_sampling_is_reproducible(self):
        args = ["generate", "--model", str(self.directory), "--chat", "Tell me a story.", "--print-ids",
                "--max-new-tokens", "12", "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95"]
        first = run_llmft(*args, "--seed", "7").stdout
        self.assertEqual(first, run_llmft(*args, "--seed", "7").stdout)
        self.assertNotEqual(first, run_llmft(*args, "--seed", "8").stdout)


if __name__ == "__main__":
    main()
