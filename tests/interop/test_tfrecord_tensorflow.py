"""TensorFlow and llmft read each other's TFRecord shards, ids intact.

1. `llmft data build` turns a JSONL file (text and prompt/completion records,
   hard strings) into 2 shards, plain, GZIP and ZLIB (`--compression`). TensorFlow reads
   them with tf.data.TFRecordDataset(compression_type=...) and
   tf.io.parse_single_example (VarLenFeature(int64) for input_ids and
   loss_mask). The ids must equal both what `llmft data inspect --json` prints
   and an independent reference: the `tokenizers` library encoding the same
   JSONL text with the same tokenizer.json, assembled by the dataset rules
   written out here (data/dataset_builder.h: text -> loss on all tokens;
   prompt/completion -> prompt masked, completion + EOS trained on; records
   dealt round-robin over the shards in input order).
2. tf.io.TFRecordWriter writes tf.train.Example protos with known ids (int64
   extremes, negative labels, empty lists, an extra bytes feature) into
   name-0000K-of-00002.tfrecord[.gz|.zlib] shards, plain, GZIP and ZLIB; `llmft data
   inspect --json` must print exactly those ids.
TensorFlow is imported once for everything (its import dominates the run time).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the import: silences TF's info lines

import subprocess
import unittest
from pathlib import Path

# Imported unguarded: a venv without tensorflow or tokenizers fails this test
# (ModuleNotFoundError, non-zero exit); scripts/setup installs both.
import tensorflow as tf
import tokenizers

from interop_common import ARGS, WORK_DIR, main, run_llmft

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO / "tests/testdata/tokenizer/smollm2"

SHARDS = 2
# TensorFlow's compression_type and llmft's --compression / file extension.
COMPRESSIONS = [("", "none", ""), ("GZIP", "gzip", ".gz"), ("ZLIB", "zlib", ".zlib")]

RECORDS = [
    {"text": "Hello, world!"},
    {"prompt": "What is the capital of France?", "completion": " Paris."},
    {"text": "Ünïcödé façade naïve — “quotes” … 日本語のテキスト, 한국어, Русский, العربية"},
    {"text": "emoji 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 and digits 3.14159 -42 1e-5 2026-11-25"},
    {"prompt": "def f(x):\n    return", "completion": " {'a': [1, 2, 3], \"b\": x ** 2}\n"},
    {"text": "tabs\tand\nnewlines\n\n\nand\r\n   runs of      spaces   "},
    {"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"},
    {"prompt": "Translate to German: good morning", "completion": " Guten Morgen"},
    {"text": " ".join(f"word{i}" for i in range(300))},  # a long record
]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Records TensorFlow writes; None leaves a feature out of the Example.
TF_RECORDS = [
    {"input_ids": [1, 15043, 29892, 3186, 29991, 2], "loss_mask": [0, 0, 1, 1, 1, 1], "labels": None},
    {"input_ids": [0, 127, 128, 16383, 16384, 2**31 - 1, 2**31, 2**32, INT64_MAX], "loss_mask": None, "labels": None},
    {"input_ids": [5, 6, 7, 8], "loss_mask": None, "labels": [-100, -100, 7, INT64_MIN]},
    {"input_ids": [49151, 0, 49151], "loss_mask": [1, 0, 1], "labels": [-100, 0, 49151]},
    {"input_ids": [], "loss_mask": None, "labels": None},  # an empty list, present
    {"input_ids": [i * 431 % 2147483647 for i in range(0, 5000, 7)], "loss_mask": None, "labels": None},
    {"input_ids": [3], "loss_mask": [1], "labels": None},
]


def reference_records() -> list[dict]:
    """input_ids/loss_mask of RECORDS computed with the `tokenizers` library."""
    tokenizer = tokenizers.Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    # SmolLM2 adds no BOS/EOS around text (add_bos_token/add_eos_token false,
    # ByteLevel post-processor); the rules below assume that, so check it.
    assert config["add_bos_token"] is False and config["add_eos_token"] is False, config
    eos = tokenizer.token_to_id(config["eos_token"])
    assert eos == 2, eos
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    out = []
    for record in RECORDS:
        if "text" in record:
            ids = encode(record["text"])
            mask = [1] * len(ids)
        else:
            prompt, completion = encode(record["prompt"]), encode(record["completion"]) + [eos]
            ids = prompt + completion
            mask = [0] * len(prompt) + [1] * len(completion)
        out.append({"input_ids": ids, "loss_mask": mask})
    return out


def tensorflow_read(paths: list[Path], compression_type: str) -> list[dict]:
    """Every record of `paths`, in order, through tf.data and tf.io.parse_single_example."""
    features = {"input_ids": tf.io.VarLenFeature(tf.int64), "loss_mask": tf.io.VarLenFeature(tf.int64)}
    dataset = tf.data.TFRecordDataset([str(p) for p in paths], compression_type=compression_type)
    out = []
    for serialized in dataset:
        parsed = tf.io.parse_single_example(serialized, features)
        out.append({name: [int(v) for v in tf.sparse.to_dense(value).numpy()] for name, value in parsed.items()})
    return out


def llmft_inspect(path: Path) -> list[dict]:
    """`llmft data inspect PATH --limit 0 --json`: one JSON object per record."""
    result = run_llmft("data", "inspect", str(path), "--limit", "0", "--json")
    return [json.loads(line) for line in result.stdout.splitlines()]


def int64_feature(values: list[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


class LlmftShardsReadByTensorFlow(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.jsonl = WORK_DIR / "records.jsonl"
        cls.jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
        cls.reference = reference_records()

    def build(self, llmft_compression: str, extension: str) -> list[Path]:
        prefix = WORK_DIR / f"built-{llmft_compression}" / "train"
        run_llmft("data", "build", "--input", str(self.jsonl), "--tokenizer", str(TOKENIZER_DIR), "--output",
                  str(prefix), "--shards", str(SHARDS), "--compression", llmft_compression)
        paths = [Path(f"{prefix}-{k:05d}-of-{SHARDS:05d}.tfrecord{extension}") for k in range(SHARDS)]
        for path in paths:
            self.assertTrue(path.is_file(), f"llmft data build did not write {path}")
        return paths

    def test_reference_is_not_trivial(self):
        # Guards the comparisons below against a reference that lost its tokens.
        self.assertEqual(len(self.reference), len(RECORDS))
        self.assertGreater(len(self.reference[8]["input_ids"]), 300)
        self.assertIn(0, self.reference[1]["loss_mask"])
        self.assertIn(1, self.reference[6]["input_ids"])  # <|im_start|> stays one special token

    def test_tensorflow_reads_built_shards(self):
        for tf_compression, llmft_compression, extension in COMPRESSIONS:
            with self.subTest(compression=llmft_compression):
                paths = self.build(llmft_compression, extension)
                if llmft_compression != "none":
                    with open(paths[0], "rb") as f:
                        magic = f.read(2)
                    # GZIP's magic 1f 8b; a zlib stream starts 78 (deflate, 32 KiB window).
                    self.assertEqual(magic[:1] if llmft_compression == "zlib" else magic,
                                     b"\x78" if llmft_compression == "zlib" else b"\x1f\x8b", paths[0])
                # Round-robin: shard k holds records k, k + SHARDS, ... in input order.
                for k, path in enumerate(paths):
                    expected = self.reference[k::SHARDS]
                    theirs = tensorflow_read([path], tf_compression)
                    ours = [{name: r[name] for name in ("input_ids", "loss_mask")} for r in llmft_inspect(path)]
                    self.assertEqual(len(theirs), len(expected), path)
                    for i, (want, tf_record, llmft_record) in enumerate(zip(expected, theirs, ours)):
                        self.assertEqual(tf_record, want, f"{path} record {i}: TensorFlow vs tokenizers")
                        self.assertEqual(llmft_record, want, f"{path} record {i}: llmft data inspect vs tokenizers")
                    self.assertEqual(len(ours), len(expected), path)

    def test_tensorflow_without_compression_type_rejects_gzip_shards(self):
        # The shards really are compressed: read as plain records they are corrupt.
        paths = self.build("gzip", ".gz")
        with self.assertRaises(tf.errors.DataLossError):
            tensorflow_read(paths[:1], "")


    def test_unknown_compression_is_one_clear_line(self):
        prefix = WORK_DIR / "built-bad" / "train"
        result = subprocess.run([ARGS.llmft, "data", "build", "--input", str(self.jsonl), "--tokenizer", str(TOKENIZER_DIR),
                                 "--output", str(prefix), "--compression", "lz4"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertEqual(result.stderr, 'llmft data: error: --compression: expected none, gzip or zlib, found "lz4"\n')
        self.assertFalse(prefix.parent.exists() and any(prefix.parent.iterdir()), "a shard was written")


class TensorFlowShardsReadByLlmft(unittest.TestCase):
    def write_shards(self, tf_compression: str, extension: str) -> list[Path]:
        directory = WORK_DIR / f"tf-written-{tf_compression or 'none'}"
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / f"name-{k:05d}-of-{SHARDS:05d}.tfrecord{extension}" for k in range(SHARDS)]
        for k, path in enumerate(paths):
            with tf.io.TFRecordWriter(str(path), options=tf.io.TFRecordOptions(compression_type=tf_compression)) as writer:
                for index, record in enumerate(TF_RECORDS[k::SHARDS]):
                    features = {name: int64_feature(values) for name, values in record.items() if values is not None}
                    # A feature llmft does not use; readers must ignore it.
                    features["doc_id"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"doc-{k}-{index}".encode()]))
                    writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
        return paths

    def test_llmft_reads_tensorflow_shards(self):
        for tf_compression, _, extension in COMPRESSIONS:
            with self.subTest(compression=tf_compression or "none"):
                paths = self.write_shards(tf_compression, extension)
                for k, path in enumerate(paths):
                    expected = TF_RECORDS[k::SHARDS]
                    ours = llmft_inspect(path)
                    self.assertEqual(len(ours), len(expected), path)
                    for i, (want, got) in enumerate(zip(expected, ours)):
                        self.assertEqual(got["record"], i, path)
                        self.assertEqual(got["input_ids"], want["input_ids"], f"{path} record {i}: input_ids")
                        for name in ("loss_mask", "labels"):
                            self.assertEqual(got.get(name), want[name], f"{path} record {i}: {name}")

    def test_llmft_rejects_gzip_shard_named_without_gz_with_one_clear_line(self):
        # TensorFlow does not record compression in the file; llmft goes by the
        # extension, so a GZIP file named *.tfrecord is read as plain records and
        # must fail cleanly, not crash: the bad-input exit code 2 (core/error.h)
        # and one line naming the file.
        source = self.write_shards("GZIP", ".gz")[0]
        misnamed = source.with_name("misnamed-00000-of-00001.tfrecord")
        misnamed.write_bytes(source.read_bytes())
        result = subprocess.run([ARGS.llmft, "data", "inspect", str(misnamed), "--json"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertTrue(result.stderr.startswith(f"llmft data: error: {misnamed}: record 0"), result.stderr)
        self.assertEqual(result.stdout, "")


if __name__ == "__main__":
    main()
