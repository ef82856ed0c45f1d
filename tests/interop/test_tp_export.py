"""A tensor-parallel run's exports against transformers and PEFT (issue 14).

SmolLM2-135M's 9 attention heads do not divide by 2, so this test makes a
small random Llama that does (4 heads, 2 KV heads, 2 layers, hidden 64) with
transformers itself, with SmolLM2's vocabulary and tokenizer files, and runs
the user's path through the binary:

  llmft data build (chats, assistant-only loss)
  ->  mpirun -np 2 llmft train with parallel.tp 2 (LoRA r 8 on every linear,
      dropout 0.1: each rank holds half of every q/k/v/gate/up LoRA B and of
      every o/down LoRA A)
  ->  llmft export --merged / --adapter by one process from the checkpoint,
      which holds full tensors whatever the layout

and checks on a token sequence:
  * the run moved the logits by far more than the tolerance;
  * transformers loading the merged directory gives llmft's base+LoRA logits
    (llmft_peft_logits --load: the exported adapter onto the base, llmft's
    forward);
  * peft.PeftModel.from_pretrained(base, adapter) gives them too;
  * the same config trained by one process (tp 1) exports an adapter that
    gives the tp 2 adapter's logits within the tolerance: the layouts train
    the same model (the LoRA dropout masks are keyed by the whole input's
    element offsets). Compared as logits, not weights: AdamW turns the fp32
    rounding noise of near-zero gradients (summed in another order under tp)
    into lr-sized steps of those elements, which the logits do not feel.

Tolerance: 1e-4 absolute on logits of one adapter in llmft and in the Hugging
Face stack, both f32 (this model's logits are of order 1 and the f32
reduction orders differ by ~1e-6). Between the tp 2 and the tp 1 runs, 1e-3:
four AdamW steps at lr 1e-2 amplify the runs' rounding differences (measured
1.3e-4 on logits the training moved by ~6.6).
"""

import json
import os
import shutil
import subprocess
import unittest
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from finetune_common import build_chats, llmft_logits, lora_run_config, transformers_logits
from interop_common import ARGS, WORK_DIR, convert_smollm2, main, run_llmft

LOGIT_TOLERANCE = 1e-4
TRAINED_TOLERANCE = 1e-3
IDS = [1, 504, 3575, 282, 4649, 314, 17, 2, 1116, 30, 2043]


def small_llama(directory: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's vocabulary, saved by transformers."""
    smollm2 = convert_smollm2("f32")
    reference = json.loads((smollm2 / "config.json").read_text())
    config = LlamaConfig(vocab_size=reference["vocab_size"], hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=True, bos_token_id=reference.get("bos_token_id"),
                         eos_token_id=reference.get("eos_token_id"), initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2 / name, directory / name)
    return directory


class TensorParallelExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        cls.base_dir = small_llama(WORK_DIR / "small-llama")
        train_file = build_chats(WORK_DIR / "data", cls.base_dir)
        cls.adapters = {}
        for tp in (2, 1):
            run_dir = WORK_DIR / f"run-tp{tp}"
            shutil.rmtree(run_dir, ignore_errors=True)
            config = WORK_DIR / f"run-tp{tp}.pbtxt"
            config.write_text(lora_run_config(cls.base_dir, train_file, run_dir, lr=1e-2, dropout=0.1,
                                              extra=f"parallel {{ tp: {tp} }}"))
            train = [ARGS.llmft, "train", "--config", str(config), "--threads", "1"]
            if tp > 1:
                train = [os.environ["LLMFT_MPIEXEC"], "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
                         "-x", "OMP_NUM_THREADS=1", "-np", str(tp), *train]
            result = subprocess.run(train, capture_output=True, text=True)
            if result.returncode != 0:
                raise AssertionError(f"{' '.join(train)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
            adapter_dir = WORK_DIR / f"adapter-tp{tp}"
            run_llmft("export", "--config", str(config), "--adapter", str(adapter_dir), "--dtype", "f32")
            cls.adapters[tp] = adapter_dir
            if tp == 2:
                cls.merged_dir = WORK_DIR / "merged-tp2"
                run_llmft("export", "--config", str(config), "--merged", str(cls.merged_dir), "--dtype", "f32")

        cls.base = llmft_logits(cls.base_dir, WORK_DIR / "base.f32", IDS)
        cls.lora = llmft_logits(cls.base_dir, WORK_DIR / "lora.f32", IDS, cls.adapters[2])
        cls.lora_one_process = llmft_logits(cls.base_dir, WORK_DIR / "lora-tp1.f32", IDS, cls.adapters[1])

    def test_training_changed_the_model(self):
        moved = float(np.abs(self.lora - self.base).max())
        self.assertGreater(moved, 50 * LOGIT_TOLERANCE, "the fine-tune must move the logits for the checks to bite")
        print(f"LoRA (tp 2) moved the logits by up to {moved:.3g}")

    def test_merged_export_in_transformers(self):
        merged = AutoModelForCausalLM.from_pretrained(self.merged_dir, dtype=torch.float32).eval()
        difference = float(np.abs(transformers_logits(merged, IDS) - self.lora).max())
        print(f"|transformers(merged of tp 2) - llmft base+LoRA| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")
        self.assertLessEqual(difference, LOGIT_TOLERANCE)

    def test_adapter_in_peft(self):
        base_model = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32).eval()
        np.testing.assert_allclose(transformers_logits(base_model, IDS), self.base, rtol=0, atol=LOGIT_TOLERANCE,
                                   err_msg="base logits")
        peft_model = PeftModel.from_pretrained(base_model, self.adapters[2]).eval()
        difference = float(np.abs(transformers_logits(peft_model, IDS) - self.lora).max())
        print(f"|PeftModel(base, tp 2 adapter) - llmft base+LoRA| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")
        self.assertLessEqual(difference, LOGIT_TOLERANCE)

    def test_tp2_trains_the_one_process_model(self):
        tp2 = load_file(str(self.adapters[2] / "adapter_model.safetensors"))
        tp1 = load_file(str(self.adapters[1] / "adapter_model.safetensors"))
        self.assertEqual(sorted(tp2), sorted(tp1))
        worst = max(float(np.abs(tp2[name] - tp1[name]).max()) for name in tp1)
        difference = float(np.abs(self.lora - self.lora_one_process).max())
        print(f"tp 2 vs one process: max |adapter difference| {worst:.3g}, max |logit difference| {difference:.3g} "
              f"(tolerance {TRAINED_TOLERANCE})")
        self.assertLessEqual(difference, TRAINED_TOLERANCE)


if __name__ == "__main__":
    main()
