"""Truncated, corrupted and lying copies of the real SmolLM2 GGUF are each
rejected by `llmft convert` with exit code 2 and one clear line naming the file
and the field or tensor, never a crash.

Field positions in the real file come from gguf-py's reader (the independent
parser); each mutation changes exactly one field of a copy.
"""

import random
import shutil
import struct
import subprocess
import unittest

import gguf

from interop_common import ARGS, WORK_DIR, main, smollm2_gguf_path


def field_value_offset(reader: gguf.GGUFReader, key: str) -> int:
    """Byte position of a metadata value (after its key and type)."""
    field = reader.fields[key]
    return field.offset + 8 + len(key.encode()) + 4


def tensor_info_offsets(reader: gguf.GGUFReader, name: str) -> dict:
    """Byte positions of a tensor info's fields."""
    tensor = next(t for t in reader.tensors if t.name == name)
    start = tensor.field.offset + 8 + len(name.encode())
    n_dims = len(tensor.shape)
    return {"n_dims": start, "ne0": start + 4, "type": start + 4 + 8 * n_dims, "offset": start + 4 + 8 * n_dims + 4}


class CorruptGgufTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.source = smollm2_gguf_path()
        cls.original = cls.source.read_bytes()
        cls.reader = gguf.GGUFReader(cls.source)
        cls.copy = WORK_DIR / "mutated.gguf"

    @classmethod
    def tearDownClass(cls):
        cls.copy.unlink(missing_ok=True)  # 98 MB
        shutil.rmtree(WORK_DIR / "out", ignore_errors=True)

    def convert(self, data: bytes) -> subprocess.CompletedProcess:
        self.copy.write_bytes(data)
        out = WORK_DIR / "out"
        shutil.rmtree(out, ignore_errors=True)
        return subprocess.run([ARGS.llmft, "convert", "--gguf", str(self.copy), "--out", str(out)],
                              capture_output=True, text=True, timeout=300)

    def expect_rejected(self, data: bytes, expected: str):
        result = self.convert(data)
        self.assertGreaterEqual(result.returncode, 0, f"crashed with signal {-result.returncode}: {result.stderr}")
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(str(self.copy), lines[0])
        self.assertIn(expected, lines[0])

    def mutated(self, position: int, fmt: str, value) -> bytes:
        data = bytearray(self.original)
        struct.pack_into(fmt, data, position, value)
        return bytes(data)

    def test_bad_magic(self):
        self.expect_rejected(b"GGML" + self.original[4:], "not a GGUF file: magic is 'GGML', expected 'GGUF'")

    def test_bad_version(self):
        self.expect_rejected(self.mutated(4, "<I", 99), "GGUF version 99 is not supported (expected 2 or 3)")

    def test_counts_too_large(self):
        self.expect_rejected(self.mutated(8, "<Q", 1 << 40), "tensor count 1099511627776 is too large")
        self.expect_rejected(self.mutated(16, "<Q", 1 << 62), "metadata count 4611686018427387904 is too large")

    def test_string_and_array_lengths_too_large(self):
        at = field_value_offset(self.reader, "general.architecture")
        self.expect_rejected(self.mutated(at, "<Q", 1 << 36),
                             "metadata key 'general.architecture': string length 68719476736")
        at = field_value_offset(self.reader, "tokenizer.ggml.tokens") + 4  # after the element type
        self.expect_rejected(self.mutated(at, "<Q", 1 << 59),
                             "metadata key 'tokenizer.ggml.tokens': array length 576460752303423488 of string")

    def test_tensor_offset_past_the_end_and_misaligned(self):
        last = self.reader.tensors[-1].name
        fields = tensor_info_offsets(self.reader, last)
        self.expect_rejected(self.mutated(fields["offset"], "<Q", len(self.original)),
                             f"tensor '{last}': data [")
        first = tensor_info_offsets(self.reader, "blk.0.ffn_down.weight")
        self.expect_rejected(self.mutated(first["offset"], "<Q", struct.unpack_from("<Q", self.original, first["offset"])[0] + 8),
                             "is not a multiple of the alignment 32")

    def test_type_and_shape_that_lie_about_the_data(self):
        fields = tensor_info_offsets(self.reader, "blk.0.ffn_down.weight")
        # Q4_1 -> Q8_0: the tensor claims more bytes than it has before the next one.
        self.expect_rejected(self.mutated(fields["type"], "<I", 8), "a type or shape does not match the stored data")
        # An unknown type id.
        self.expect_rejected(self.mutated(fields["type"], "<I", 4), "tensor 'blk.0.ffn_down.weight': unknown GGML type 4")
        # ne0 1536 -> 1568: a longer row than stored.
        self.expect_rejected(self.mutated(fields["ne0"], "<Q", 1568), "a type or shape does not match the stored data")
        # Too many dimensions.
        self.expect_rejected(self.mutated(fields["n_dims"], "<I", 9), "tensor 'blk.0.ffn_down.weight': 9 dimensions")

    def test_truncated(self):
        size = len(self.original)
        for length in (10, 1000, self.reader.data_offset - 3, size // 2, size - 1):
            self.expect_rejected(self.original[:length], "")  # one line naming the file; the cause depends on where

    def test_random_header_corruption_never_crashes(self):
        rng = random.Random(5)
        header_end = self.reader.data_offset
        for trial in range(25):
            data = bytearray(self.original)
            for _ in range(1 + trial % 4):
                data[rng.randrange(header_end)] = rng.randrange(256)
            result = self.convert(bytes(data))
            self.assertGreaterEqual(result.returncode, 0, f"trial {trial}: signal {-result.returncode}")
            self.assertIn(result.returncode, (0, 2), f"trial {trial}: {result.stderr}")


if __name__ == "__main__":
    main()
