"""transformers and tokenizers load the directory `llmft convert` makes from the
real SmolLM2 GGUF, and agree with what transformers builds from the GGUF itself
(`gguf_file=`): the config's fields, the special tokens, the chat template, and
the token ids on hard strings (multilingual text, code, whitespace runs, digits,
emoji, special tokens, rendered chat templates).
"""

import json
import math
import unicodedata
import unittest
from pathlib import Path

import tokenizers
from transformers import AutoConfig, AutoTokenizer

from interop_common import convert_smollm2, main, smollm2_gguf_path

REPO = Path(__file__).resolve().parents[2]

HARD_STRINGS = [
    "Hello, world!",
    "What is the capital of France?",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "                                        long run of spaces",
    "digits 0 1 12 123 1234 12345 3.14159 -42 1e-5 2026-11-25",
    "Ünïcödé façade naïve coöperate — “quotes” ‘single’ …",
    "日本語のテキストと中文文本，한국어 텍스트",
    "Русский текст и ελληνικά και العربية و עברית",
    "emoji 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 ✓ ✗ ★",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    "#include <stdio.h>\nint main() { printf(\"%d\\n\", 1 << 4); }",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>x<file_sep>y<jupyter_code>",
    "x² + y³ = z¹ ½ ⅔ Ⅻ",
    "",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "List three primes."},
        {"role": "assistant", "content": "2, 3, 5."},
        {"role": "user", "content": "And 3 more? 🙂"},
    ],
]


class ConvertedDirectoryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = convert_smollm2("f32")
        gguf = smollm2_gguf_path()
        cls.gguf_dir, cls.gguf_file = str(gguf.parent), gguf.name

    def test_config_loads_and_matches_transformers_reading_the_gguf(self):
        ours = AutoConfig.from_pretrained(self.directory)
        theirs = AutoConfig.from_pretrained(self.gguf_dir, gguf_file=self.gguf_file)
        self.assertEqual(ours.model_type, "llama")
        self.assertEqual(ours.architectures, ["LlamaForCausalLM"])
        expected = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
        for field, value in expected.items():
            self.assertEqual(getattr(ours, field), value, field)
            self.assertEqual(getattr(ours, field), getattr(theirs, field), field)
        self.assertEqual(ours.rms_norm_eps, 1e-5)
        self.assertTrue(math.isclose(ours.rms_norm_eps, theirs.rms_norm_eps, rel_tol=1e-6))  # theirs: float32 widened
        theta = lambda config: (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
        self.assertEqual(theta(ours), 100000.0)
        self.assertEqual(theta(ours), theta(theirs))

    def test_tokenizer_json_equals_the_tokenizer_fixture(self):
        # tests/testdata/tokenizer/smollm2/tokenizer.json was made by the tokenizer
        # fixtures' script with transformers' GGUF converter and SmolLM2's published
        # pre-tokenizer (make_expected.py there); ours is rebuilt by llmft in C++.
        ours = json.loads((self.directory / "tokenizer.json").read_text())
        fixture = json.loads((REPO / "tests/testdata/tokenizer/smollm2/tokenizer.json").read_text())
        self.assertEqual(ours, fixture)

    def test_special_tokens_and_chat_template(self):
        ours = AutoTokenizer.from_pretrained(self.directory)
        theirs = AutoTokenizer.from_pretrained(self.gguf_dir, gguf_file=self.gguf_file)
        for attribute in ("bos_token", "eos_token", "pad_token", "unk_token"):
            self.assertEqual(getattr(ours, attribute), getattr(theirs, attribute), attribute)
        self.assertEqual(ours.eos_token, "<|im_end|>")
        self.assertEqual(ours.chat_template, theirs.chat_template)
        for chat in CHATS:
            for generation_prompt in (False, True):
                text = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)
                self.assertEqual(text, theirs.apply_chat_template(chat, tokenize=False,
                                                                  add_generation_prompt=generation_prompt))
                self.assertEqual(ours(text).input_ids, theirs(text).input_ids, text)

    def test_ids_on_hard_strings(self):
        # The GGUF says tokenizer.ggml.pre = "smollm": llama.cpp (src/llama-vocab.cpp) then isolates every
        # \p{N} character before the GPT-2 regex, as SmolLM2's published tokenizer.json does with
        # Digits(individual_digits=True); llmft writes that. transformers maps no split for "smollm" and uses
        # ByteLevel alone, which differs only on numeric characters outside ASCII (x², ½, Ⅻ: ASCII digits
        # have no merges in this vocabulary). So: ids equal to transformers' GGUF tokenizer on every string
        # without such characters, and equal on all strings once its pre-tokenizer is set to the model's own.
        ours = AutoTokenizer.from_pretrained(self.directory)
        theirs = AutoTokenizer.from_pretrained(self.gguf_dir, gguf_file=self.gguf_file)
        theirs_with_digits = tokenizers.Tokenizer.from_str(theirs.backend_tokenizer.to_str())
        theirs_with_digits.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
            tokenizers.pre_tokenizers.Digits(individual_digits=True),
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        raw = tokenizers.Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        compared_plain = 0
        for text in HARD_STRINGS:
            ids = ours(text).input_ids
            self.assertEqual(raw.encode(text).ids, ids, repr(text))
            self.assertEqual(theirs_with_digits.encode(text).ids, ids, repr(text))
            if not any(ord(c) > 127 and unicodedata.category(c).startswith("N") for c in text):
                self.assertEqual(theirs(text).input_ids, ids, repr(text))
                compared_plain += 1
            self.assertEqual(ours.decode(ids), theirs.decode(ids), repr(text))
            self.assertEqual(ours.decode(ids), text, repr(text))  # byte-level BPE round-trips
        self.assertGreaterEqual(compared_plain, len(HARD_STRINGS) - 1)
        # No BOS is added (tokenizer.ggml.add_bos_token is false), and special tokens stay whole.
        self.assertEqual(ours("<|im_start|>hi<|im_end|>").input_ids[0], 1)
        self.assertEqual(ours("<|im_start|>hi<|im_end|>").input_ids[-1], 2)


if __name__ == "__main__":
    main()
