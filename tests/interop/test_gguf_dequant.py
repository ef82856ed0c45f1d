"""Every tensor of the real SmolLM2 GGUF, as `llmft convert` writes it, is
bit-identical to gguf-py's own numpy dequantization (gguf.quants.dequantize).

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

from interop_common import convert_smollm2, main, smollm2_gguf_path

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


def reference_tensors():
    reader = gguf.GGUFReader(smollm2_gguf_path())
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


if __name__ == "__main__":
    main()
