"""llmft's LoRA against Hugging Face PEFT and transformers.

The llmft_peft_logits peer (tests/peft/llmft_peft_logits.cc) loads a model
directory, attaches LoRA (r 8, alpha 16, all-linear, fixed seed, random
nonzero B), writes the base and base+LoRA logits of some ids, the PEFT adapter
directory and the merged model directory. Then:
  * peft.PeftModel.from_pretrained(base, adapter) gives llmft's base+LoRA
    logits (so the tensor names, shapes, [r, in]/[out, r] layouts, scaling and
    target modules are what PEFT reads);
  * transformers loading the merged directory gives the same logits, and so
    does PEFT's own merge_and_unload();
And the other way: an adapter made by peft itself (get_peft_model, rsLoRA,
three target modules, random B, save_pretrained) loads into llmft
(load_lora_adapter, through the peer's --load mode) with PEFT's logits.
All on the tiny golden checkpoint (tests/testdata/model/tiny_llama, untied) and
on the converted SmolLM2-135M (tied embeddings, 30 layers).

Tolerance: 2e-3 absolute on logits (both sides f32; different GEMM blocking
and reduction orders, as in test_model_logits.py), and the LoRA must move
the logits by far more than that, so an adapter PEFT ignored would fail.
"""

import json
import os
import subprocess
import unittest
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from interop_common import WORK_DIR, convert_smollm2, main

LOGIT_TOLERANCE = 2e-3
TINY_LLAMA = Path(__file__).resolve().parents[1] / "testdata" / "model" / "tiny_llama"
TINY_IDS = [1, 17, 5, 42, 9, 88, 3, 64]
SMOLLM2_IDS = [1, 504, 3575, 282, 4649, 314, 17, 2]


def peft_logits_peer() -> str:
    """llmft_peft_logits: $LLMFT_PEFT_LOGITS, else beside llmft_logits in the build tree."""
    if "LLMFT_PEFT_LOGITS" in os.environ:
        return os.environ["LLMFT_PEFT_LOGITS"]
    return str(Path(os.environ["LLMFT_LOGITS"]).parents[1] / "peft" / "llmft_peft_logits")


def run_peer(model_dir: Path, out_dir: Path, ids):
    result = subprocess.run([peft_logits_peer(), str(model_dir), str(out_dir), *map(str, ids)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"llmft_peft_logits exited {result.returncode}:\n{result.stdout}{result.stderr}")
    base = np.fromfile(out_dir / "base.f32", dtype=np.float32).reshape(len(ids), -1)
    lora = np.fromfile(out_dir / "lora.f32", dtype=np.float32).reshape(len(ids), -1)
    return base, lora


def transformers_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


class PeftAdapterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)

    def check(self, model_dir: Path, ids, label: str):
        out_dir = WORK_DIR / label
        base, lora = run_peer(model_dir, out_dir, ids)
        self.assertGreater(float(np.abs(lora - base).max()), 50 * LOGIT_TOLERANCE,
                           f"{label}: the adapter must change the logits for the comparison to mean anything")

        config = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
        self.assertEqual(config["peft_type"], "LORA")

        base_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        np.testing.assert_allclose(transformers_logits(base_model, ids), base, rtol=0, atol=LOGIT_TOLERANCE,
                                   err_msg=f"{label}: base logits")
        peft_model = PeftModel.from_pretrained(base_model, out_dir / "adapter").eval()
        # Every LoRA tensor in the file must have been loaded (none left at PEFT's own init).
        peft_state = {name: tensor for name, tensor in peft_model.state_dict().items() if "lora_" in name}
        self.assertEqual(len(peft_state), 2 * 7 * base_model.config.num_hidden_layers, label)
        theirs = transformers_logits(peft_model, ids)
        difference = float(np.abs(theirs - lora).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, f"{label}: PeftModel vs llmft base+LoRA")

        peft_merged = transformers_logits(peft_model.merge_and_unload(), ids)
        np.testing.assert_allclose(peft_merged, lora, rtol=0, atol=LOGIT_TOLERANCE,
                                   err_msg=f"{label}: PEFT merge_and_unload vs llmft base+LoRA")

        merged = AutoModelForCausalLM.from_pretrained(out_dir / "merged", dtype=torch.float32).eval()
        merged_difference = float(np.abs(transformers_logits(merged, ids) - lora).max())
        self.assertLessEqual(merged_difference, LOGIT_TOLERANCE, f"{label}: llmft merged dir vs base+LoRA")
        print(f"{label}: |PEFT - llmft| = {difference:.3g}, |merged - llmft| = {merged_difference:.3g} "
              f"(tolerance {LOGIT_TOLERANCE}; LoRA moved logits by {float(np.abs(lora - base).max()):.3g})")

    def test_tiny_llama(self):
        self.check(TINY_LLAMA, TINY_IDS, "tiny_llama")

    def test_peft_made_adapter_loads_in_llmft(self):
        ids = TINY_IDS
        base_model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA, dtype=torch.float32).eval()
        base = transformers_logits(base_model, ids)
        config = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.1, use_rslora=True,
                            target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
        peft_model = get_peft_model(base_model, config)
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
        peft_model.eval()
        theirs = transformers_logits(peft_model, ids)
        self.assertGreater(float(np.abs(theirs - base).max()), 50 * LOGIT_TOLERANCE)
        adapter_dir = WORK_DIR / "peft_made_adapter"
        peft_model.save_pretrained(adapter_dir)
        out = WORK_DIR / "peft_made_adapter.f32"
        result = subprocess.run([peft_logits_peer(), "--load", str(TINY_LLAMA), str(adapter_dir), str(out),
                                 *map(str, ids)], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        ours = np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)
        difference = float(np.abs(ours - theirs).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, "llmft with PEFT's adapter vs PeftModel")
        print(f"peft-made adapter: |llmft - PEFT| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")

    def test_smollm2(self):
        self.check(convert_smollm2("f32"), SMOLLM2_IDS, "smollm2")


if __name__ == "__main__":
    main()
