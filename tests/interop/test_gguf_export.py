"""`llmft convert --to-gguf` (the writer behind `llmft export --gguf`) held
against the `gguf` package (llama.cpp's gguf-py) and transformers, on the real
SmolLM2 model converted to a Hugging Face directory:

- every tensor's bytes equal gguf-py's own quantization of the same weights
  (gguf.quants.quantize; for attn_q/attn_k after llama.cpp's q/k row
  permutation, convert_hf_to_gguf.py's LlamaModel.permute, written here from
  that source) for every type llmft writes; 1-D tensors stay F32 as the
  converter keeps them;
- gguf-py's reader finds the file well formed, with the tokenizer
  (tokens, token types, merges, special ids, add-bos/eos flags, pre-tokenizer)
  and the chat template equal to those of the original llama.cpp GGUF;
- transformers loads the f32 GGUF (`gguf_file=`) with llmft's logits (2e-3,
  as test_model_logits) and tokenizes as the Hugging Face tokenizer does;
- bad input and a full disk end with one line and no file: the disk is made
  full by RLIMIT_FSIZE (the write fails with EFBIG, SIGXFSZ ignored).
"""

import os
import resource
import signal
import subprocess
import unittest

import gguf
import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from transformers import AutoModelForCausalLM, AutoTokenizer

from interop_common import ARGS, WORK_DIR, convert_smollm2, main, run_llmft, smollm2_gguf_path

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
LOGIT_TOLERANCE = 2e-3
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n\n"]
TOKENIZER_KEYS = [
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
]
MODEL_KEYS = [
    "general.architecture", "llama.block_count", "llama.context_length", "llama.embedding_length",
    "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
    "llama.rope.dimension_count",
]
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def write_gguf(directory, type_name: str):
    out = WORK_DIR / f"smollm2-{type_name}.gguf"
    run_llmft("convert", "--to-gguf", str(directory), "--out", str(out), "--type", type_name)
    return out


class GgufExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        cls.directory = convert_smollm2("f32")
        cls.weights = load_numpy(cls.directory / "model.safetensors")
        cls.original = gguf.GGUFReader(smollm2_gguf_path())

    def test_every_type_bit_identical_to_gguf_py_quantization(self):
        heads = int(field(self.original, "llama.attention.head_count"))
        kv_heads = int(field(self.original, "llama.attention.head_count_kv"))
        for type_name in TYPES:
            with self.subTest(type=type_name):
                qtype = gguf.GGMLQuantizationType[type_name.upper()]
                reader = gguf.GGUFReader(write_gguf(self.directory, type_name))
                tensors = {tensor.name: tensor for tensor in reader.tensors}
                self.assertEqual(len(tensors), len(self.weights))
                for hf_name, values in self.weights.items():
                    tensor = tensors[gguf_name(hf_name)]
                    if hf_name.endswith("q_proj.weight"):
                        values = permute(values, heads)
                    elif hf_name.endswith("k_proj.weight"):
                        values = permute(values, kv_heads)
                    expected_type = qtype if values.ndim == 2 else gguf.GGMLQuantizationType.F32
                    self.assertEqual(tensor.tensor_type, expected_type, hf_name)
                    self.assertEqual(list(reversed(tensor.shape.tolist())), list(values.shape), hf_name)
                    expected = gguf.quants.quantize(values, expected_type)
                    self.assertEqual(np.asarray(tensor.data).tobytes(), np.asarray(expected).tobytes(),
                                     f"{type_name}: {hf_name}")
                self.assertEqual(int(field(reader, "general.file_type")),
                                 int(getattr(gguf.LlamaFileType, f"MOSTLY_{type_name.upper()}", 0)))

    def test_metadata_tokenizer_and_chat_template_equal_the_original_gguf(self):
        reader = gguf.GGUFReader(write_gguf(self.directory, "q8_0"))
        self.assertEqual(reader.alignment, 32)
        for key in MODEL_KEYS + TOKENIZER_KEYS:
            ours, theirs = field(reader, key), field(self.original, key)
            self.assertEqual(ours, theirs, key)
        self.assertEqual(field(reader, "tokenizer.ggml.add_eos_token"), False)

    def test_transformers_loads_the_gguf_with_llmfts_logits(self):
        out = write_gguf(self.directory, "f32")
        model = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name,
                                                     dtype=torch.float32).eval()
        gguf_tokenizer = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
        hf_tokenizer = AutoTokenizer.from_pretrained(self.directory)
        worst = 0.0
        for prompt in PROMPTS:
            ids = hf_tokenizer(prompt).input_ids
            self.assertEqual(gguf_tokenizer(prompt).input_ids, ids, prompt)
            logits_out = WORK_DIR / "logits.f32"
            subprocess.run([os.environ["LLMFT_LOGITS"], str(self.directory), str(logits_out), *map(str, ids)],
                           check=True, capture_output=True, text=True)
            ours = np.fromfile(logits_out, dtype=np.float32).reshape(len(ids), -1)
            with torch.no_grad():
                theirs = model(torch.tensor([ids])).logits[0].numpy()
            difference = float(np.abs(ours - theirs).max())
            worst = max(worst, difference)
            self.assertLessEqual(difference, LOGIT_TOLERANCE, prompt)
        print(f"largest logit difference {worst:.3g} (tolerance {LOGIT_TOLERANCE})")

    def test_a_qwen2_gguf_loads_in_transformers_with_llmfts_logits(self):
        # A small random Qwen2 (q/k/v biases, the qwen2 architecture keys, no
        # q/k permutation) with SmolLM2's tokenizer, exported by convert --to-gguf.
        from transformers import Qwen2Config, Qwen2ForCausalLM
        directory = WORK_DIR / "tiny-qwen2"
        torch.manual_seed(5)
        config = Qwen2Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                             max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1e6,
                             bos_token_id=1, eos_token_id=2)
        model = Qwen2ForCausalLM(config).eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.copy_(0.5 * torch.randn(parameter.shape))  # biases that matter
        model.save_pretrained(directory, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (self.directory / name).exists():
                (directory / name).write_bytes((self.directory / name).read_bytes())
        out = WORK_DIR / "tiny-qwen2-f32.gguf"
        run_llmft("convert", "--to-gguf", str(directory), "--out", str(out), "--type", "f32")
        reader = gguf.GGUFReader(out)
        self.assertEqual(field(reader, "general.architecture"), "qwen2")
        loaded = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name,
                                                      dtype=torch.float32).eval()
        ids = AutoTokenizer.from_pretrained(directory)(PROMPTS[0]).input_ids
        logits_out = WORK_DIR / "qwen2-logits.f32"
        subprocess.run([os.environ["LLMFT_LOGITS"], str(directory), str(logits_out), *map(str, ids)],
                       check=True, capture_output=True, text=True)
        ours = np.fromfile(logits_out, dtype=np.float32).reshape(len(ids), -1)
        with torch.no_grad():
            theirs = loaded(torch.tensor([ids])).logits[0].numpy()
            original = model(torch.tensor([ids])).logits[0].numpy()
        # transformers 5 saves rope_theta inside rope_parameters: llmft must read it there.
        self.assertLessEqual(float(np.abs(ours - original).max()), LOGIT_TOLERANCE, "llmft vs the Qwen2 itself")
        difference = float(np.abs(theirs - ours).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, "transformers on llmft's qwen2 GGUF vs llmft")
        print(f"qwen2 GGUF: |transformers - llmft| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")

    def assert_one_line_failure(self, result, code, text, out):
        self.assertEqual(result.returncode, code, result.stdout + result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn(text, result.stderr)
        self.assertEqual([p.name for p in out.parent.iterdir()], [], "a file was left behind")

    def test_bad_input_and_a_full_disk_leave_no_file(self):
        target = WORK_DIR / "bad"
        target.mkdir(exist_ok=True)
        out = target / "model.gguf"
        command = [ARGS.llmft, "convert", "--to-gguf", str(self.directory), "--out", str(out)]
        result = subprocess.run(command + ["--type", "q4_k"], capture_output=True, text=True)
        self.assert_one_line_failure(result, 2, "'q4_k' is not supported", out)

        def small_disk():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000_000, 20_000_000))

        result = subprocess.run(command + ["--type", "f16"], capture_output=True, text=True, preexec_fn=small_disk)
        self.assert_one_line_failure(result, 1, "File too large", out)
        # Control: the same command without the limit writes the file.
        subprocess.run(command + ["--type", "f16"], capture_output=True, text=True, check=True)
        self.assertTrue(out.exists())
        out.unlink()


if __name__ == "__main__":
    main()
