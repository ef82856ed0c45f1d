"""Every tensor of the real SmolLM2 GGUF, as `llmft convert` writes it, is
bit-identical to gguf-py's own numpy dequantization (gguf.quants.dequantize);
so is every tensor of a small llama model that gguf-py's own writer makes here
with every block type llmft reads (the real file has Q4_1, Q8_0 and F32 only).

Route: `llmft convert --dtype f32` writes model.safetensors; here each GGUF
tensor is dequantized by the `gguf` package, reshaped to the row-major shape
(GGUF dims reversed), and for attn_q / attn_k the RoPE row permutation of
llama.cpp's convert_hf_to_gguf.py is undone with transformers' formula
(modeling_gguf_pytorch_utils.py, reverse_permute_weights: pure data movement,
so bit-identity still holds). The bf16 output is the same values rounded by
PyTorch's float32 -> bfloat16 conversion (round to nearest even).
"""

import re
import unittest

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch

from interop_common import WORK_DIR, convert_smollm2, main, run_llmft, smollm2_gguf_path

LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name in TOP_NAMES:
        return TOP_NAMES[gguf_name]
    layer, rest = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name).groups()
    return f"model.layers.{layer}.{LAYER_NAMES[rest]}"


def reverse_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    dim = weights.shape[0] // n_head // 2
    w = weights.reshape(n_head, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def reference_tensors(path=None):
    reader = gguf.GGUFReader(path or smollm2_gguf_path())
    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values = np.asarray(values, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist())))
        if ".attn_q." in tensor.name:
            values = reverse_permute(values, heads)
        elif ".attn_k." in tensor.name:
            values = reverse_permute(values, kv_heads)
        yield tensor, values


class DequantizationTest(unittest.TestCase):
    def test_every_tensor_bit_identical_to_gguf_py(self):
        ours = load_numpy(convert_smollm2("f32") / "model.safetensors")
        seen = set()
        types = {}
        for tensor, expected in reference_tensors():
            name = hf_name(tensor.name)
            seen.add(name)
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
            self.assertIn(name, ours, f"{tensor.name} -> {name} missing from model.safetensors")
            actual = ours[name]
            self.assertEqual(actual.dtype, np.float32, name)
            self.assertEqual(actual.shape, expected.shape, name)
            differing = np.count_nonzero(actual.view(np.uint32) != expected.view(np.uint32))
            self.assertEqual(differing, 0, f"{tensor.name} ({tensor.tensor_type.name}): {differing} elements differ")
        self.assertEqual(seen, set(ours), "tensors in model.safetensors that the GGUF does not have")
        self.assertEqual(len(seen), 272)
        print(f"bit-identical: {len(seen)} tensors by GGUF type {types}")

    def test_bf16_output_is_round_to_nearest_even_of_the_f32_values(self):
        ours = load_torch(convert_smollm2("bf16") / "model.safetensors")
        for tensor, expected in reference_tensors():
            name = hf_name(tensor.name)
            self.assertEqual(ours[name].dtype, torch.bfloat16, name)
            rounded = torch.from_numpy(expected).to(torch.bfloat16)
            self.assertTrue(torch.equal(ours[name].view(torch.int16), rounded.view(torch.int16)), name)


Q = gguf.GGMLQuantizationType
# Block type per tensor of the synthetic model (K-quants need rows of 256).
SYNTHETIC_TYPES = {
    "token_embd.weight": Q.F16,
    "blk.0.attn_q.weight": Q.Q4_0,
    "blk.0.attn_k.weight": Q.Q4_1,
    "blk.0.attn_v.weight": Q.Q5_0,
    "blk.0.attn_output.weight": Q.Q5_1,
    "blk.0.ffn_gate.weight": Q.Q4_K,
    "blk.0.ffn_up.weight": Q.Q5_K,
    "blk.0.ffn_down.weight": Q.Q6_K,
    "blk.1.attn_q.weight": Q.Q8_0,
    "blk.1.attn_k.weight": Q.BF16,
    "blk.1.attn_v.weight": Q.F32,
    "blk.1.attn_output.weight": Q.F16,
    "blk.1.ffn_gate.weight": Q.Q6_K,
    "blk.1.ffn_up.weight": Q.Q4_K,
    "blk.1.ffn_down.weight": Q.Q5_K,
    "output.weight": Q.Q8_0,
}
# Bytes of each K-quant block that hold f16 scales: random finite values there
# (random bits elsewhere), since gguf-py has no K-quant quantizer.
K_QUANT_F16_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def synthetic_tensor(rng: np.random.Generator, qtype, rows: int, columns: int) -> np.ndarray:
    if qtype in K_QUANT_F16_OFFSETS:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(rows * columns // block_size, type_size), dtype=np.uint8)
        for offset in K_QUANT_F16_OFFSETS[qtype]:
            scales = rng.normal(0, 0.05, size=blocks.shape[0]).astype(np.float16)
            blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
        return blocks.reshape(rows, -1)
    values = rng.normal(0, 0.5, size=(rows, columns)).astype(np.float32)
    return values if qtype == Q.F32 else gguf.quants.quantize(values, qtype)


def write_synthetic_llama(path):
    """A 2-layer llama (hidden 256, 4 heads / 2 KV heads, FFN 512) by gguf-py's GGUFWriter."""
    rng = np.random.default_rng(7)
    hidden, ffn, heads, kv_heads = 256, 512, 4, 2
    head_dim = hidden // heads
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["ab"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output.weight": (len(tokens), hidden)}
    for layer in range(2):
        shapes.update({
            f"blk.{layer}.attn_q.weight": (heads * head_dim, hidden),
            f"blk.{layer}.attn_k.weight": (kv_heads * head_dim, hidden),
            f"blk.{layer}.attn_v.weight": (kv_heads * head_dim, hidden),
            f"blk.{layer}.attn_output.weight": (hidden, heads * head_dim),
            f"blk.{layer}.ffn_gate.weight": (ffn, hidden),
            f"blk.{layer}.ffn_up.weight": (ffn, hidden),
            f"blk.{layer}.ffn_down.weight": (hidden, ffn),
        })
    for name, (rows, columns) in shapes.items():
        qtype = SYNTHETIC_TYPES[name]
        data = synthetic_tensor(rng, qtype, rows, columns)
        writer.add_tensor(name, data, raw_dtype=None if data.dtype != np.uint8 else qtype)
    for name in ["output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "blk.1.attn_norm.weight",
                 "blk.1.ffn_norm.weight"]:
        writer.add_tensor(name, rng.normal(1, 0.1, size=hidden).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class EveryBlockTypeTest(unittest.TestCase):
    def test_every_block_type_bit_identical_to_gguf_py(self):
        path = WORK_DIR / "synthetic.gguf"
        write_synthetic_llama(path)
        out = WORK_DIR / "synthetic-f32"
        run_llmft("convert", "--gguf", str(path), "--out", str(out))
        ours = load_numpy(out / "model.safetensors")
        reader = gguf.GGUFReader(path)
        self.assertEqual({t.name: t.tensor_type for t in reader.tensors if t.name in SYNTHETIC_TYPES},
                         SYNTHETIC_TYPES)
        checked = set()
        for tensor, expected in reference_tensors(path):
            name = hf_name(tensor.name)
            differing = np.count_nonzero(ours[name].view(np.uint32) != expected.view(np.uint32))
            self.assertEqual(ours[name].shape, expected.shape, name)
            self.assertEqual(differing, 0, f"{tensor.name} ({tensor.tensor_type.name}): {differing} elements differ")
            checked.add(tensor.tensor_type.name)
        self.assertEqual(checked, {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K",
                                   "Q6_K"})


if __name__ == "__main__":
    main()
