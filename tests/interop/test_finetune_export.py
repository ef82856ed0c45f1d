"""After a real LoRA fine-tune: llmft's exports against transformers and PEFT.

Issue 7 asks that the files a user gets out of a fine-tune (not a random
adapter, which test_peft_adapter.py covers) load in the Hugging Face stack
with llmft's own numbers. So this test runs the whole path through the
binary on the real SmolLM2-135M-Instruct:

  llmft convert --gguf  ->  llmft data build (messages, assistant-only loss)
  ->  llmft train (LoRA r 8, all-linear, a few steps at a high lr so B moves)
  ->  llmft export --merged / --adapter

and then checks, on a token sequence:
  * llmft's base+LoRA logits (llmft_peft_logits --load: the exported adapter
    onto the base, llmft's forward) differ from the base by far more than the
    tolerance — the run really trained something;
  * transformers loading the merged directory gives those logits;
  * peft.PeftModel.from_pretrained(base, adapter) gives those logits;
  * llmft loading its own merged directory gives them too.

Tolerance: 2e-3 absolute on logits, both sides f32 (different GEMM blocking
and reduction orders; the same bound as test_model_logits.py, where the
measured difference is about 1e-4).
"""

import json
import subprocess
import unittest

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from finetune_common import build_chats, llmft_logits, lora_run_config, transformers_logits
from interop_common import WORK_DIR, convert_smollm2, main, run_llmft

LOGIT_TOLERANCE = 2e-3
IDS = [1, 504, 3575, 282, 4649, 314, 17, 2, 1116, 30, 2043]


class FinetuneExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        cls.base_dir = convert_smollm2("f32")
        train_file = build_chats(WORK_DIR / "data", cls.base_dir)
        run_dir = WORK_DIR / "run"
        config = WORK_DIR / "run.pbtxt"
        config.write_text(lora_run_config(cls.base_dir, train_file, run_dir,
                                          extra=f'logging {{ every_n_steps: 1 jsonl_path: "{run_dir}/metrics.jsonl" }}'))
        for stale in (run_dir / "checkpoints").glob("step-*"):
            subprocess.run(["rm", "-rf", str(stale)], check=True)
        run_llmft("train", "--config", str(config), "--threads", "2")
        cls.merged_dir = WORK_DIR / "merged"
        cls.adapter_dir = WORK_DIR / "adapter"
        run_llmft("export", "--config", str(config), "--merged", str(cls.merged_dir), "--dtype", "f32")
        run_llmft("export", "--config", str(config), "--adapter", str(cls.adapter_dir), "--dtype", "f32")
        cls.metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]

        # llmft's base and base+LoRA (the exported adapter loaded onto the base by llmft).
        cls.base = llmft_logits(cls.base_dir, WORK_DIR / "base.f32", IDS)
        cls.lora = llmft_logits(cls.base_dir, WORK_DIR / "lora.f32", IDS, cls.adapter_dir)

    def test_training_changed_the_model(self):
        self.assertTrue(any("loss" in record for record in self.metrics), f"no loss in {self.metrics}")
        moved = float(np.abs(self.lora - self.base).max())
        self.assertGreater(moved, 50 * LOGIT_TOLERANCE, "the fine-tune must move the logits for the checks to bite")
        print(f"LoRA moved the logits by up to {moved:.3g}")

    def test_merged_export_in_transformers(self):
        merged = AutoModelForCausalLM.from_pretrained(self.merged_dir, dtype=torch.float32).eval()
        difference = float(np.abs(transformers_logits(merged, IDS) - self.lora).max())
        print(f"|transformers(merged) - llmft base+LoRA| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")
        self.assertLessEqual(difference, LOGIT_TOLERANCE)

    def test_merged_export_in_llmft(self):
        merged = llmft_logits(self.merged_dir, WORK_DIR / "merged.f32", IDS)
        difference = float(np.abs(merged - self.lora).max())
        print(f"|llmft(merged) - llmft base+LoRA| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")
        self.assertLessEqual(difference, LOGIT_TOLERANCE)

    def test_adapter_in_peft(self):
        config = json.loads((self.adapter_dir / "adapter_config.json").read_text())
        self.assertEqual(config["peft_type"], "LORA")
        self.assertEqual(config["r"], 8)
        base_model = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32).eval()
        np.testing.assert_allclose(transformers_logits(base_model, IDS), self.base, rtol=0, atol=LOGIT_TOLERANCE,
                                   err_msg="base logits")
        peft_model = PeftModel.from_pretrained(base_model, self.adapter_dir).eval()
        loaded = [name for name in peft_model.state_dict() if "lora_" in name]
        self.assertEqual(len(loaded), 2 * 7 * base_model.config.num_hidden_layers)
        difference = float(np.abs(transformers_logits(peft_model, IDS) - self.lora).max())
        print(f"|PeftModel(base, adapter) - llmft base+LoRA| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")
        self.assertLessEqual(difference, LOGIT_TOLERANCE)


if __name__ == "__main__":
    main()
