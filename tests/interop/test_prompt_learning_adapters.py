"""llmft's prompt tuning, P-tuning and prefix tuning against Hugging Face PEFT.

The llmft_peft_logits peer (tests/peft/llmft_peft_logits.cc, --method mode)
attaches each method with llmft's own initialisation (5 virtual tokens, an
encoder 16 wide where the method has one), writes the adapted logits of some
ids and the PEFT adapter directory. Then:
  * peft.PeftModel.from_pretrained(base, adapter) gives llmft's logits: the
    adapter_config.json fields, the "prompt_embeddings" tensor and its layout
    ([P, hidden] for the virtual tokens; [P, layers * 2 * kv_heads * head_dim]
    for the prefix's keys and values), and where they act (virtual tokens in
    front, positions 0..P+T-1; prefix keys/values unrotated in every layer's
    cache, real tokens numbered from P) are what PEFT and transformers do;
  * the other way, adapters made by peft itself (get_peft_model with
    PromptTuningConfig, PromptEncoderConfig, PrefixTuningConfig with
    prefix_projection, save_pretrained) load into llmft (load_peft_adapter,
    the peer's --load mode) with PEFT's logits.
On the tiny golden checkpoint (grouped-query: 4 heads, 2 KV heads) and, for
prefix tuning, the converted SmolLM2-135M (9 heads, 3 KV heads, 30 layers).

Tolerance: 2e-3 absolute on logits (both f32, as test_peft_adapter.py), and
each method must move the logits by far more than that.
"""

import json
import subprocess
import unittest
from pathlib import Path

import numpy as np
import torch
from peft import (PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model)
from transformers import AutoModelForCausalLM

from interop_common import WORK_DIR, convert_smollm2, main
from test_peft_adapter import peft_logits_peer, transformers_logits

LOGIT_TOLERANCE = 2e-3
TINY_LLAMA = Path(__file__).resolve().parents[1] / "testdata" / "model" / "tiny_llama"
TINY_IDS = [1, 17, 5, 42, 9, 88, 3, 64]
SMOLLM2_IDS = [1, 504, 3575, 282, 4649, 314, 17, 2]
VIRTUAL_TOKENS = 5


def run(args):
    result = subprocess.run([peft_logits_peer(), *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"llmft_peft_logits exited {result.returncode}:\n{result.stdout}{result.stderr}")


def read_logits(path: Path, rows: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32).reshape(rows, -1)


class PromptLearningAdapterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)

    def llmft_to_peft(self, model_dir: Path, ids, method: str, peft_type: str, label: str):
        out_dir = WORK_DIR / f"{label}_{method}"
        run(["--method", method, model_dir, out_dir, *ids])
        virtual_rows = VIRTUAL_TOKENS if peft_type in ("PROMPT_TUNING", "P_TUNING") else 0
        ours = read_logits(out_dir / "method.f32", len(ids) + virtual_rows)
        config = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
        self.assertEqual(config["peft_type"], peft_type)

        base_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        base = transformers_logits(base_model, ids)
        self.assertGreater(float(np.abs(ours[virtual_rows:] - base).max()), 50 * LOGIT_TOLERANCE,
                           f"{label} {method}: the method must change the logits for the comparison to mean anything")
        peft_model = PeftModel.from_pretrained(base_model, out_dir / "adapter").eval()
        theirs = transformers_logits(peft_model, ids)
        self.assertEqual(theirs.shape, ours.shape, f"{label} {method}: PEFT's logits cover the virtual rows too")
        difference = float(np.abs(theirs - ours).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, f"{label} {method}: PeftModel vs llmft")
        print(f"{label} {method}: |PEFT - llmft| = {difference:.3g} (tolerance {LOGIT_TOLERANCE}; "
              f"moved logits by {float(np.abs(ours[virtual_rows:] - base).max()):.3g})")

    def test_llmft_prompt_tuning_loads_in_peft(self):
        self.llmft_to_peft(TINY_LLAMA, TINY_IDS, "prompt_tuning", "PROMPT_TUNING", "tiny_llama")

    def test_llmft_p_tuning_loads_in_peft(self):
        self.llmft_to_peft(TINY_LLAMA, TINY_IDS, "p_tuning", "P_TUNING", "tiny_llama")

    def test_llmft_prefix_tuning_loads_in_peft(self):
        self.llmft_to_peft(TINY_LLAMA, TINY_IDS, "prefix_tuning", "PREFIX_TUNING", "tiny_llama")
        self.llmft_to_peft(TINY_LLAMA, TINY_IDS, "prefix_projection", "PREFIX_TUNING", "tiny_llama")

    def test_llmft_prefix_tuning_of_smollm2_loads_in_peft(self):
        self.llmft_to_peft(convert_smollm2("f32"), SMOLLM2_IDS, "prefix_projection", "PREFIX_TUNING", "smollm2")

    def peft_to_llmft(self, config, label: str):
        ids = TINY_IDS
        torch.manual_seed(7)
        base_model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA, dtype=torch.float32).eval()
        base = transformers_logits(base_model, ids)
        peft_model = get_peft_model(base_model, config)
        peft_model.eval()
        theirs = transformers_logits(peft_model, ids)
        virtual_rows = theirs.shape[0] - len(ids)
        self.assertGreater(float(np.abs(theirs[virtual_rows:] - base).max()), 50 * LOGIT_TOLERANCE, label)
        adapter_dir = WORK_DIR / f"peft_made_{label}"
        peft_model.save_pretrained(adapter_dir)
        out = WORK_DIR / f"peft_made_{label}.f32"
        run(["--load", TINY_LLAMA, adapter_dir, out, *ids])
        ours = read_logits(out, theirs.shape[0])
        difference = float(np.abs(ours - theirs).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, f"llmft with PEFT's {label} adapter vs PeftModel")
        print(f"peft-made {label}: |llmft - PEFT| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")

    def test_peft_made_prompt_tuning_loads_in_llmft(self):
        self.peft_to_llmft(PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), "prompt_tuning")

    def test_peft_made_p_tuning_loads_in_llmft(self):
        self.peft_to_llmft(PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=24),
                           "p_tuning")

    def test_peft_made_prefix_tuning_loads_in_llmft(self):
        self.peft_to_llmft(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True,
                                              encoder_hidden_size=24), "prefix_tuning")


if __name__ == "__main__":
    main()
