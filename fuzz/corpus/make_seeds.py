#!/usr/bin/env python3
"""Makes the trimmed seed files of fuzz/corpus from real ones.

Run from the repository root with the interop environment (scripts/setup):
    .venv/bin/python fuzz/corpus/make_seeds.py

  gguf/smollm2_reduced.gguf   SmolLM2-135M-Instruct.Q4_1.gguf (scripts/smollm2-path)
                              with every metadata key, arrays cut to their first
                              64 entries, and its first 12 tensors (F32, Q4_1,
                              Q8_0 ...) cut to one or two rows of their own data
  gguf/smollm2_head.gguf      the first 16 KiB of that file as it is (a
                              download cut short inside the token list)
  tokenizer/smollm2_trimmed   tests/testdata/tokenizer/smollm2/tokenizer.json with
                              the ids below 1024 and the merges among them, a NUL,
                              and a text to encode
  tokenizer/byte_fallback, metaspace   those test tokenizers, a NUL, a text
Every other seed is a copy of a test fixture or written by hand (README there).
"""
import json
import pathlib
import struct
import subprocess

from gguf import GGUFReader, GGUFValueType

root = pathlib.Path(__file__).resolve().parents[2]
corpus = root / "fuzz" / "corpus"
TEXT = "Hello world! 日本語 🙂 <|im_start|>user\n  12345 tabs\tand  spaces<|im_end|>"


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


def field_value(field, index):
    part = field.parts[index]
    return bytes(part) if field.types[-1] == GGUFValueType.STRING else part[0].item()


def encode_value(value_type, value) -> bytes:
    if value_type == GGUFValueType.STRING:
        return gguf_string(value)
    return struct.pack(SCALARS[value_type], value)


def reduced_gguf(source: pathlib.Path) -> bytes:
    reader = GGUFReader(source)
    kvs = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        entry = gguf_string(key.encode()) + struct.pack("<I", field.types[0])
        if field.types[0] == GGUFValueType.ARRAY:
            indices = field.data[:64]
            entry += struct.pack("<IQ", field.types[1], len(indices))
            entry += b"".join(encode_value(field.types[1], field_value(field, i)) for i in indices)
        else:
            entry += encode_value(field.types[0], field_value(field, field.data[0]))
        kvs.append(entry)
    alignment = 32
    infos, blobs, offset = [], [], 0
    for tensor in reader.tensors[:12]:
        # One or two rows of the tensor's own bytes: ne[0] stays (a whole
        # number of blocks), ne[1] becomes 2 (1 for a vector).
        ne = [int(tensor.shape[0])] + ([2] if len(tensor.shape) > 1 else [])
        row_bytes = tensor.n_bytes // (tensor.n_elements // ne[0])
        blob = bytes(tensor.data.reshape(-1).view("uint8")[: row_bytes * (ne[1] if len(ne) > 1 else 1)])
        infos.append(gguf_string(tensor.name.encode()) + struct.pack("<I", len(ne)) +
                     b"".join(struct.pack("<Q", n) for n in ne) + struct.pack("<IQ", tensor.tensor_type, offset))
        padded = blob + b"\0" * (-len(blob) % alignment)
        blobs.append(padded)
        offset += len(padded)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    return head + b"".join(blobs)


def trimmed_tokenizer(path: pathlib.Path, keep_ids: int) -> bytes:
    data = json.loads(path.read_text())
    vocab = {token: i for token, i in data["model"]["vocab"].items() if i < keep_ids}
    merges = []
    for merge in data["model"]["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    data["model"]["vocab"] = vocab
    data["model"]["merges"] = merges
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < keep_ids]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def main():
    gguf_path = pathlib.Path(subprocess.check_output([root / "scripts" / "smollm2-path"], text=True).strip())
    (corpus / "gguf" / "smollm2_reduced.gguf").write_bytes(reduced_gguf(gguf_path))
    with open(gguf_path, "rb") as f:
        (corpus / "gguf" / "smollm2_head.gguf").write_bytes(f.read(16384))
    testdata = root / "tests" / "testdata" / "tokenizer"
    text = TEXT.encode()
    (corpus / "tokenizer" / "smollm2_trimmed").write_bytes(
        trimmed_tokenizer(testdata / "smollm2" / "tokenizer.json", 1024) + b"\0" + text)
    for name in ("byte_fallback", "metaspace"):
        (corpus / "tokenizer" / name).write_bytes((testdata / name / "tokenizer.json").read_bytes() + b"\0" + text)


if __name__ == "__main__":
    main()
