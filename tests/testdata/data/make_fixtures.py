#!/usr/bin/python3
"""Independent TFRecord/tf.Example writer and checker for llmft's data tests.

Nothing here comes from llmft: the schema is TensorFlow's own
tensorflow/core/example/{feature,example}.proto (copied below, trimmed of
options and comments), compiled at run time with protoc into a temporary
directory and used through Debian's python3-protobuf; the CRC32C is computed
bit by bit from the Castagnoli polynomial; gzip comes from Python's gzip module.

  /usr/bin/python3 tests/testdata/data/make_fixtures.py
      regenerates the committed fixtures next to this script:
      fixture-0000{0,1}-of-00002.tfrecord, fixture.tfrecord.gz, fixtures.json
  /usr/bin/python3 tests/testdata/data/make_fixtures.py --verify FILE EXPECTED_JSON
      reads FILE (gzip if it ends in .gz, zlib if .zlib) with this script's own
      reader and checks every record against the list in EXPECTED_JSON
      ([{"input_ids": [...], "labels": [...]?, "loss_mask": [...]?}, ...]);
      exits 1 with the first difference.
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

FEATURE_PROTO = """
syntax = "proto3";
package tensorflow;
message BytesList { repeated bytes value = 1; }
message FloatList { repeated float value = 1 [packed = true]; }
message Int64List { repeated int64 value = 1 [packed = true]; }
message Feature {
  oneof kind {
    BytesList bytes_list = 1;
    FloatList float_list = 2;
    Int64List int64_list = 3;
  }
}
message Features { map<string, Feature> feature = 1; }
message FeatureList { repeated Feature feature = 1; }
message FeatureLists { map<string, FeatureList> feature_list = 1; }
"""

EXAMPLE_PROTO = """
syntax = "proto3";
package tensorflow;
import "tensorflow/core/example/feature.proto";
message Example { Features features = 1; }
message SequenceExample {
  Features context = 1;
  FeatureLists feature_lists = 2;
}
"""


def compile_schema():
    """Returns the generated example_pb2 module (TensorFlow's paths and package)."""
    out = tempfile.mkdtemp(prefix="llmft-fixture-proto-")
    proto_dir = os.path.join(out, "tensorflow", "core", "example")
    os.makedirs(proto_dir)
    for name, text in (("feature.proto", FEATURE_PROTO), ("example.proto", EXAMPLE_PROTO)):
        with open(os.path.join(proto_dir, name), "w") as f:
            f.write(text)
    subprocess.run(["protoc", "--proto_path=" + out, "--python_out=" + out,
                    "tensorflow/core/example/feature.proto", "tensorflow/core/example/example.proto"],
                   check=True)
    sys.path.insert(0, out)
    from tensorflow.core.example import example_pb2  # noqa: E402 (generated just now)
    return example_pb2


def crc32c(data):
    """CRC32C bit by bit: reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked_crc(data):
    """TFRecord's mask: rotate right by 15 bits, add 0xa282ead8 (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record):
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked_crc(length)) + record + struct.pack("<I", masked_crc(record))


def unframe(stream, path):
    """Splits a TFRecord byte stream into records, checking both CRCs."""
    records, offset = [], 0
    while offset < len(stream):
        if offset + 12 > len(stream):
            raise ValueError(f"{path}: truncated header at byte {offset}")
        length_bytes = stream[offset:offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", stream[offset + 8:offset + 12])
        if length_crc != masked_crc(length_bytes):
            raise ValueError(f"{path}: length CRC mismatch at byte {offset}")
        data = stream[offset + 12:offset + 12 + length]
        footer = stream[offset + 12 + length:offset + 16 + length]
        if len(data) != length or len(footer) != 4:
            raise ValueError(f"{path}: truncated record at byte {offset}")
        if struct.unpack("<I", footer)[0] != masked_crc(data):
            raise ValueError(f"{path}: data CRC mismatch at byte {offset}")
        records.append(data)
        offset += 16 + length
    return records


def make_example(example_pb2, record):
    example = example_pb2.Example()
    for name in ("input_ids", "labels", "loss_mask"):
        if name in record:
            int64_list = example.features.feature[name].int64_list
            int64_list.SetInParent()  # an empty list is still an int64_list
            int64_list.value.extend(record[name])
    for name, text in record.get("extra_bytes", {}).items():
        example.features.feature[name].bytes_list.value.append(text.encode())
    for name, values in record.get("extra_floats", {}).items():
        example.features.feature[name].float_list.value.extend(values)
    return example.SerializeToString()


def decode(example_pb2, data, path, index):
    example = example_pb2.Example()
    example.ParseFromString(data)
    record = {}
    for name in ("input_ids", "labels", "loss_mask"):
        if name in example.features.feature:
            feature = example.features.feature[name]
            if feature.WhichOneof("kind") != "int64_list":
                raise ValueError(f"{path}: record {index}: feature {name} is {feature.WhichOneof('kind')}")
            record[name] = list(feature.int64_list.value)
    return record


# Fixture contents: ids typical of a tokenizer, large ids (Llama 3's vocabulary
# is 128256; 2^31 - 1 is the largest id llmft accepts), an empty document,
# prompt/completion masks, HF-style labels, and extra features a reader must ignore.
SHARDS = [
    [
        {"input_ids": [1, 15043, 29892, 3186, 29991, 2]},
        {"input_ids": [128000, 9906, 11, 1917, 0, 128001, 128255],
         "loss_mask": [0, 0, 0, 1, 1, 1, 1]},
        {"input_ids": [], "extra_bytes": {"text": ""}},
    ],
    [
        {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
        {"input_ids": [2147483647, 0, 300, 16384, 2097152],
         "extra_bytes": {"text": "h\u00e9llo \u4e16\u754c"}, "extra_floats": {"weight": [0.5, 2.0]}},
        {"input_ids": list(range(1000, 1300))},
    ],
]
GZIP_RECORDS = [
    {"input_ids": [42] * 50},
    {"input_ids": [3, 1, 4, 1, 5, 9, 2, 6], "loss_mask": [0, 0, 0, 1, 1, 1, 1, 1]},
]


def expected(record):
    return {k: record[k] for k in ("input_ids", "labels", "loss_mask") if k in record}


def generate(out_dir):
    example_pb2 = compile_schema()
    manifest = {}
    for index, records in enumerate(SHARDS):
        name = f"fixture-{index:05d}-of-{len(SHARDS):05d}.tfrecord"
        with open(os.path.join(out_dir, name), "wb") as f:
            for record in records:
                f.write(frame(make_example(example_pb2, record)))
        manifest[name] = [expected(r) for r in records]
    stream = b"".join(frame(make_example(example_pb2, r)) for r in GZIP_RECORDS)
    with open(os.path.join(out_dir, "fixture.tfrecord.gz"), "wb") as f:
        f.write(gzip.compress(stream, mtime=0))
    manifest["fixture.tfrecord.gz"] = [expected(r) for r in GZIP_RECORDS]
    # One record per line, so a diff of a regenerated file reads well.
    lines = ['{"generated_by": "/usr/bin/python3 tests/testdata/data/make_fixtures.py",', ' "files": {']
    for file_index, (name, records) in enumerate(manifest.items()):
        lines.append(f'  "{name}": [')
        for i, record in enumerate(records):
            lines.append("   " + json.dumps(record) + ("," if i + 1 < len(records) else ""))
        lines.append("  ]" + ("," if file_index + 1 < len(manifest) else ""))
    lines.append(" }}")
    with open(os.path.join(out_dir, "fixtures.json"), "w") as f:
        f.write("\n".join(lines) + "\n")


def verify(path, expected_json):
    example_pb2 = compile_schema()
    with open(path, "rb") as f:
        stream = f.read()
    if path.endswith(".gz"):
        stream = gzip.decompress(stream)
    elif path.endswith(".zlib"):
        stream = zlib.decompress(stream)
    with open(expected_json) as f:
        want = json.load(f)
    got = [decode(example_pb2, data, path, i) for i, data in enumerate(unframe(stream, path))]
    if len(got) != len(want):
        print(f"{path}: {len(got)} records, expected {len(want)}")
        return 1
    for index, (g, w) in enumerate(zip(got, want)):
        if g != w:
            print(f"{path}: record {index}: decoded {g}, expected {w}")
            return 1
    print(f"{path}: {len(got)} records match")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--verify":
        sys.exit(verify(sys.argv[2], sys.argv[3]))
    if len(sys.argv) != 1:
        sys.exit(__doc__)
    generate(os.path.dirname(os.path.abspath(__file__)))
