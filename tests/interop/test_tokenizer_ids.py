"""Hugging Face `tokenizers` loading the tokenizer.json that `llmft convert`
rebuilds from the real SmolLM2 GGUF, and llmft's own tokenizer (through
`llmft tokenize`) give identical ids on hard strings (multilingual text, code,
whitespace runs, digits, emoji, special tokens, rendered chat templates; and
with special-token text kept as text, against encode_special_tokens=True) and on
a real text of more than 1 MB: the Python standard library's top-level
modules (the *.py files directly in sysconfig's "stdlib" directory of the
interpreter running this test, in name order, until 1.2 MB), one text per file.
"""

import json
import sysconfig
import unittest
from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer

from interop_common import WORK_DIR, convert_smollm2, main, run_llmft

REAL_TEXT_BYTES = 1_200_000

HARD_STRINGS = [
    "Hello, world!",
    "",
    " ",
    "\n",
    "   leading and trailing   ",
    "tabs\t\tand\r\nwindows\r\nnewlines\n\n\n",
    "many      spaces\u00a0non-breaking\u2003em-space\u3000ideographic",
    "Grüße aus Köln, naïve café, Ærøskøbing, Straße",
    "Москва — столица России. Україна. Ελληνικά. עִברִית. العربية",
    "日本語のテキストと漢字、中文简体和繁體，한국어 문장입니다.",
    "हिन्दी, தமிழ், ไทย, ქართული, Հայերեն",
    "Emoji: 🙂😀👍🏽 👩‍👩‍👧‍👦 🇫🇷 ❤️ 🧑‍💻",
    "Digits: 0 1 12 123 1234 12345 3.14159 -2.5e-10 1,000,000 ２０２４",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n\tif x>=0: pass\n",
    "int main() { printf(\"%d\\n\", a[i++] << 2); return 0; }",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "I'm you're he's we'll they've I'd DON'T",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|im_start|><|im_end|><repo_name><file_sep>",
    "text<|im_end|>glued<|im_start|>to tokens",
    "<|im_end |> <| im_end|> <|IM_END|> almost special",
    "ＦＵＬＬＷＩＤＴＨ ｶﾀｶﾅ ﬁ ligature é vs e\u0301 (combining)",
    "\u200b zero width \u200d joiner \ufeff bom",
    "a" * 3000,
    " " * 500 + "x",
    "🙂" * 200,
]


class TokenizerIdsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = convert_smollm2("f32")
        cls.reference = Tokenizer.from_file(str(cls.directory / "tokenizer.json"))
        cls.transformers_tokenizer = AutoTokenizer.from_pretrained(cls.directory)

    def llmft_ids(self, texts, *extra):
        path = WORK_DIR / "texts.jsonl"
        with open(path, "w", encoding="utf-8") as out:
            for text in texts:
                out.write(json.dumps(text, ensure_ascii=False) + "\n")
        lines = run_llmft("tokenize", "--tokenizer", str(self.directory), "--input", str(path), *extra).stdout
        rows = lines.split("\n")[:-1]
        self.assertEqual(len(rows), len(texts))
        return [[int(t) for t in row.split()] for row in rows]

    def compare(self, texts, label):
        ours = self.llmft_ids(texts)
        theirs = [encoding.ids for encoding in self.reference.encode_batch(texts, add_special_tokens=False)]
        for text, our_ids, their_ids in zip(texts, ours, theirs):
            self.assertEqual(our_ids, their_ids, f"{label}: {text[:80]!r}")
        return sum(len(ids) for ids in ours)

    def test_hard_strings(self):
        self.compare(HARD_STRINGS, "hard string")
        # With the tokenizer's own special tokens added (SmolLM2 adds none; the check holds either way).
        ours = self.llmft_ids(HARD_STRINGS, "--add-special-tokens")
        theirs = [encoding.ids for encoding in self.reference.encode_batch(HARD_STRINGS, add_special_tokens=True)]
        self.assertEqual(ours, theirs)

    def test_ordinary_encoding_matches_encode_special_tokens(self):
        # `llmft tokenize --ordinary` (special-token text stays text: what user content gets in a chat)
        # against tokenizers' encode_special_tokens=True.
        reference = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        reference.encode_special_tokens = True
        ours = self.llmft_ids(HARD_STRINGS, "--ordinary")
        theirs = [encoding.ids for encoding in reference.encode_batch(HARD_STRINGS, add_special_tokens=False)]
        for text, our_ids, their_ids in zip(HARD_STRINGS, ours, theirs):
            self.assertEqual(our_ids, their_ids, f"ordinary: {text[:80]!r}")

    def test_rendered_chat_templates(self):
        conversations = [
            [{"role": "user", "content": "Hi"}],
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "4"}, {"role": "user", "content": "Grüße 🙂 日本語"}],
            [{"role": "system", "content": ""}, {"role": "user", "content": "  spaced  \n\n"}],
        ]
        rendered = [self.transformers_tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                    for c in conversations]
        self.compare(rendered, "rendered chat")

    def test_real_text_over_one_megabyte(self):
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        texts, total = [], 0
        for path in sorted(stdlib.glob("*.py")):
            text = path.read_text(encoding="utf-8", errors="replace")
            texts.append(text)
            total += len(text.encode("utf-8"))
            if total >= REAL_TEXT_BYTES:
                break
        self.assertGreaterEqual(total, 1_000_000, f"only {total} bytes of Python sources under {stdlib}")
        tokens = self.compare(texts, "stdlib source")
        print(f"{len(texts)} files of {stdlib}, {total} bytes, {tokens} tokens: identical ids")


if __name__ == "__main__":
    main()
