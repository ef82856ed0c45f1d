#!/usr/bin/env python3
"""Independent NumPy reference of the Hugging Face Llama-family forward pass.

Creates tiny random checkpoints in Hugging Face layout (config.json +
model.safetensors, the safetensors bytes written here with struct/json, not by
llmft) and golden logits for a few token sequences, for
tests/model/llama_golden_test.cc.

Regenerate (from the repository root; numpy only, in a throwaway venv):
    python3 -m venv /tmp/venv-ref && /tmp/venv-ref/bin/pip install numpy
    /tmp/venv-ref/bin/python tests/reference/llama_reference.py tests/testdata/model

The forward follows transformers' modeling_llama.py / modeling_qwen2.py:
  * RMSNorm: x * rsqrt(mean(x^2) + eps), then times the weight (computed here
    in float64; the weights are what is stored, so bf16 checkpoints are
    evaluated with their bf16-rounded values).
  * RoPE in the rotate-half convention: q * cos + rotate_half(q) * sin with
    rotate_half(x) = concat(-x[d/2:], x[:d/2]) and cos/sin of
    concat(freqs, freqs); inv_freq from rope_theta and rope_scaling (llama3:
    _compute_llama3_parameters in modeling_rope_utils.py, transcribed below).
  * GQA: K/V heads repeated (repeat_kv) to the query heads; causal softmax
    attention scaled by 1/sqrt(head_dim); o_proj.
  * SwiGLU MLP: down(silu(gate(x)) * up(x)).
  * LM head: lm_head.weight, or embed_tokens.weight when tied.

Outputs (each checkpoint directory):
  config.json, model.safetensors, golden.safetensors
  golden.safetensors holds input_ids (I32 [B, T]) and logits (F32 [B, T, V]).
"""
import json
import math
import os
import struct
import sys

import numpy as np


# ---- safetensors writer (format: huggingface/safetensors docs) -------------
def to_bf16_bits(values):
    """float32 -> bfloat16 bits with round-to-nearest-even (no NaNs here)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_bf16_bits(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype string, numpy array of the stored bytes)."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name, dtype, array in tensors:
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for blob in blobs:
            out.write(blob)


# ---- the model ---------------------------------------------------------------
def rope_inv_freq(config):
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    base = config.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.get("rope_scaling")
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    assert kind == "llama3", kind
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def rms_norm(x, weight, eps):
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return weight * (x / np.sqrt(variance + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def linear(x, weights, name):
    y = x @ weights[name + ".weight"].T
    if name + ".bias" in weights:
        y = y + weights[name + ".bias"]
    return y


def forward(config, weights, input_ids):
    """input_ids [B, T] -> logits [B, T, V] (float64)."""
    batch, time = input_ids.shape
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    eps = config["rms_norm_eps"]

    x = weights["model.embed_tokens.weight"][input_ids]
    positions = np.arange(time, dtype=np.float64)
    freqs = positions[:, None] * rope_inv_freq(config)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[None, None], np.sin(emb)[None, None]  # [1, 1, T, D]
    causal = np.triu(np.full((time, time), -np.inf), k=1)

    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        h = rms_norm(x, weights[prefix + "input_layernorm.weight"], eps)
        q = linear(h, weights, prefix + "self_attn.q_proj").reshape(batch, time, heads, head_dim).transpose(0, 2, 1, 3)
        k = linear(h, weights, prefix + "self_attn.k_proj").reshape(batch, time, kv_heads, head_dim).transpose(0, 2, 1, 3)
        v = linear(h, weights, prefix + "self_attn.v_proj").reshape(batch, time, kv_heads, head_dim).transpose(0, 2, 1, 3)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, heads // kv_heads, axis=1)  # repeat_kv
        v = np.repeat(v, heads // kv_heads, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + causal
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        attention = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, time, heads * head_dim)
        x = x + linear(attention, weights, prefix + "self_attn.o_proj")
        h = rms_norm(x, weights[prefix + "post_attention_layernorm.weight"], eps)
        gate = linear(h, weights, prefix + "mlp.gate_proj")
        up = linear(h, weights, prefix + "mlp.up_proj")
        x = x + linear(gate / (1.0 + np.exp(-gate)) * up, weights, prefix + "mlp.down_proj")

    x = rms_norm(x, weights["model.norm.weight"], eps)
    head = weights["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else weights["lm_head.weight"]
    return x @ head.T


def make_checkpoint(directory, config, storage_dtype, seed, sequences):
    rng = np.random.default_rng(seed)
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    qkv_bias = config["architectures"][0] == "Qwen2ForCausalLM" or config.get("attention_bias", False)
    o_bias = config["architectures"][0] != "Qwen2ForCausalLM" and config.get("attention_bias", False)

    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        if qkv_bias:
            shapes[p + "self_attn.q_proj.bias"] = (heads * head_dim,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_heads * head_dim,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_heads * head_dim,)
        if o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (vocab, hidden)

    weights, stored = {}, []
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            values = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            values = 0.1 * rng.standard_normal(shape)
        else:  # large enough that logits are O(1) and every path matters
            values = rng.standard_normal(shape) / math.sqrt(shape[-1]) * (2.0 if "embed" in name or "lm_head" in name else 1.0)
        values = values.astype(np.float32)
        if storage_dtype == "BF16":
            bits = to_bf16_bits(values)
            weights[name] = from_bf16_bits(bits).astype(np.float64)
            stored.append((name, "BF16", bits))
        else:
            weights[name] = values.astype(np.float64)
            stored.append((name, "F32", values))

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
    write_safetensors(os.path.join(directory, "model.safetensors"), stored)
    input_ids = np.array(sequences, dtype=np.int32)
    logits = forward(config, weights, input_ids).astype(np.float32)
    write_safetensors(os.path.join(directory, "golden.safetensors"),
                      [("input_ids", "I32", input_ids), ("logits", "F32", logits)])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/testdata/model"
    # Plain Llama with GQA and an untied head, f32 weights.
    llama = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": None, "tie_word_embeddings": False, "attention_bias": False,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    make_checkpoint(os.path.join(out, "tiny_llama"), llama, "F32", seed=1,
                    sequences=[[1, 15, 27, 3, 99, 42, 42, 7, 64], [1, 5, 6, 7, 8, 9, 10, 11, 12]])
    # Qwen2: q/k/v biases, tied head, head_dim != hidden / heads, llama3
    # rope_scaling with a short original context so every band is exercised,
    # bf16 storage.
    qwen = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 97,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 500.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        "tie_word_embeddings": True, "use_sliding_window": False, "hidden_act": "silu",
        "bos_token_id": 0, "eos_token_id": [1, 2], "torch_dtype": "bfloat16",
    }
    make_checkpoint(os.path.join(out, "tiny_qwen2"), qwen, "BF16", seed=2,
                    sequences=[[0, 96, 50, 3, 17, 17, 80, 33, 2, 44, 12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


if __name__ == "__main__":
    main()
