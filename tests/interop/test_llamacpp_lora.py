# side-environment: llamacpp  (tests/interop/CMakeLists.txt: .venv-llamacpp ahead of .venv on PYTHONPATH)
"""llama.cpp itself (llama-cpp-python, .venv-llamacpp) applies llmft's LoRA adapter
GGUF (`llmft export --gguf-adapter`) to the base model's GGUF, as
`llama-cli -m base.gguf --lora adapter.gguf` does, and gives the logits of the
model llmft trained.

A real LoRA fine-tune of SmolLM2-135M-Instruct through the binary (r 8,
alpha 16, all-linear, so q and k, whose B rows llama.cpp needs permuted, are
adapted; a few steps at a high lr so B moves), then on a token sequence,
llama.cpp's logits (logits_all) of:

- base f32 GGUF + adapter (f32, the default) against llmft's merged export
  (llmft_logits): both sides f32, tolerance 1e-3 (measured 7e-5; llama.cpp's
  base alone against llmft's base: 5e-5);
- base f16 GGUF + adapter against llmft's base rounded to f16 (the f16 GGUF
  read back by `llmft convert --gguf`) plus the adapter (llmft_peft_logits),
  tolerance 0.15 (measured 0.05): llama.cpp's CPU matmul of F16 weights
  rounds the activations to f16 too, which llmft does not;
- base f32 GGUF + the adapter written as f16, bf16 and q8_0, against the
  merged model, within each type's rounding (tolerances below; measured
  9e-4, 9e-3 and 2.3e-2);
- controls: llama.cpp's base alone differs from the merged model by about 12,
  far more than those tolerances, so each comparison can fail; and the same
  adapter with B's q/k rows put back in Hugging Face order (rewritten with
  gguf-py) is off by far more than the f32 tolerance, so the test sees the
  permutation llama.cpp needs.

llama.cpp keeps its KV cache in f16 by default; here it is f32 (type_k,
type_v), so that rounding, which is no part of the adapter, stays out of the
comparison.
"""

import subprocess
import unittest

import gguf
import llama_cpp
import numpy as np

from finetune_common import build_chats, llmft_logits, lora_run_config
from interop_common import WORK_DIR, convert_smollm2, main, run_llmft

IDS = [1, 504, 3575, 282, 4649, 314, 17, 2, 1116, 30, 2043]
F32_TOLERANCE = 1e-3
F16_BASE_TOLERANCE = 0.15
ADAPTER_TYPE_TOLERANCE = {"f16": 5e-3, "bf16": 3e-2, "q8_0": 0.1}


def llamacpp_logits(model, adapter=None) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(model), lora_path=str(adapter) if adapter else None, n_ctx=64,
                          n_threads=2, logits_all=True, type_k=llama_cpp.GGML_TYPE_F32,
                          type_v=llama_cpp.GGML_TYPE_F32, seed=0, verbose=False)
    llm.eval(IDS)
    logits = np.array(llm.scores[:len(IDS)], dtype=np.float32)
    llm.close()
    return logits


def unpermute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of convert_hf_to_gguf.py's LlamaModel.permute."""
    return (rows.reshape(n_head, rows.shape[0] // n_head // 2, 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def without_qk_permutation(adapter, base, out):
    """`adapter` (an f32 adapter GGUF) rewritten by gguf-py with B of q and k in Hugging Face row order."""
    reader, base_reader = gguf.GGUFReader(adapter), gguf.GGUFReader(base)
    heads = int(base_reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(base_reader.fields["llama.attention.head_count_kv"].contents())
    writer = gguf.GGUFWriter(out, arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(reader.fields["adapter.lora.alpha"].contents()))
    for tensor in reader.tensors:
        values = np.array(tensor.data, dtype=np.float32).reshape(list(reversed(tensor.shape.tolist())))
        if tensor.name.endswith("attn_q.weight.lora_b"):
            values = unpermute(values, heads)
        elif tensor.name.endswith("attn_k.weight.lora_b"):
            values = unpermute(values, kv_heads)
        writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class LlamaCppLoraTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.base_dir = convert_smollm2("f32")
        run_dir = WORK_DIR / "run"
        train_file = build_chats(WORK_DIR / "data", cls.base_dir)
        config = WORK_DIR / "run.pbtxt"
        config.write_text(lora_run_config(cls.base_dir, train_file, run_dir))
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        run_llmft("train", "--config", str(config), "--threads", "2")
        cls.merged_dir, cls.adapter_dir = WORK_DIR / "merged", WORK_DIR / "adapter"
        cls.adapters = {type_name: WORK_DIR / f"adapter-{type_name}.gguf" for type_name in ["f32", *ADAPTER_TYPE_TOLERANCE]}
        run_llmft("export", "--config", str(config), "--merged", str(cls.merged_dir), "--adapter", str(cls.adapter_dir),
                  "--dtype", "f32", "--gguf-adapter", str(cls.adapters["f32"]))
        for type_name, path in cls.adapters.items():
            if type_name != "f32":
                run_llmft("export", "--config", str(config), "--gguf-adapter", str(path), "--type", type_name)
        cls.base_gguf = {}
        for type_name in ["f32", "f16"]:
            cls.base_gguf[type_name] = WORK_DIR / f"base-{type_name}.gguf"
            run_llmft("convert", "--to-gguf", str(cls.base_dir), "--out", str(cls.base_gguf[type_name]), "--type",
                      type_name)

        cls.merged = llmft_logits(cls.merged_dir, WORK_DIR / "merged.f32", IDS)
        # llmft's base as the f16 GGUF holds it (read back to f32) plus the adapter.
        base_from_f16 = WORK_DIR / "base-from-f16"
        run_llmft("convert", "--gguf", str(cls.base_gguf["f16"]), "--out", str(base_from_f16), "--dtype", "f32")
        cls.f16_base_lora = llmft_logits(base_from_f16, WORK_DIR / "f16-base-lora.f32", IDS, cls.adapter_dir)
        cls.base_alone = llamacpp_logits(cls.base_gguf["f32"])

    def compare(self, ours: np.ndarray, theirs: np.ndarray, tolerance: float, what: str):
        difference = float(np.abs(ours - theirs).max())
        print(f"|{what}| = {difference:.3g} (tolerance {tolerance})")
        self.assertLessEqual(difference, tolerance, what)

    def test_control_the_adapter_moves_the_logits(self):
        moved = float(np.abs(self.base_alone - self.merged).max())
        print(f"llama.cpp base alone vs the merged model: {moved:.3g}")
        self.assertGreater(moved, 10 * F16_BASE_TOLERANCE)

    def test_f32_base_with_the_adapter_is_the_merged_model(self):
        self.compare(self.merged, llamacpp_logits(self.base_gguf["f32"], self.adapters["f32"]), F32_TOLERANCE,
                     "llama.cpp(f32 base + adapter) - llmft merged")
        # Control: B of q and k left in Hugging Face row order.
        unpermuted = WORK_DIR / "adapter-unpermuted.gguf"
        without_qk_permutation(self.adapters["f32"], self.base_gguf["f32"], unpermuted)
        wrong = float(np.abs(llamacpp_logits(self.base_gguf["f32"], unpermuted) - self.merged).max())
        print(f"control, q/k rows of B not permuted: {wrong:.3g}")
        self.assertGreater(wrong, 10 * F32_TOLERANCE)

    def test_f16_base_with_the_adapter_is_the_f16_base_plus_lora(self):
        theirs = llamacpp_logits(self.base_gguf["f16"], self.adapters["f32"])
        self.compare(self.f16_base_lora, theirs, F16_BASE_TOLERANCE, "llama.cpp(f16 base + adapter) - llmft f16 base + LoRA")
        print(f"(and against the f32 merged model: {float(np.abs(theirs - self.merged).max()):.3g})")

    def test_adapter_types(self):
        for type_name, tolerance in ADAPTER_TYPE_TOLERANCE.items():
            with self.subTest(type=type_name):
                self.compare(self.merged, llamacpp_logits(self.base_gguf["f32"], self.adapters[type_name]), tolerance,
                             f"llama.cpp(f32 base + {type_name} adapter) - llmft merged")


if __name__ == "__main__":
    main()
