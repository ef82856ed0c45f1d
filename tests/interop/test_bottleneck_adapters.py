# side-environment: adapters  (tests/interop/CMakeLists.txt: .venv-adapters ahead of .venv on PYTHONPATH)
"""llmft's bottleneck adapters against AdapterHub's `adapters` library.

(transformers 4.57 and adapters 1.3 from .venv-adapters, ahead of .venv on
PYTHONPATH: tests/interop/requirements-adapters.txt.)

The llmft_peft_logits peer (--method bottleneck_pfeiffer / bottleneck_houlsby)
attaches each placement with random up-projections, writes the adapted logits
of some ids and the AdapterHub adapter directory. Then:
  * adapters.init(model); model.load_adapter(dir, use_safetensors=True) and
    set_active_adapters give llmft's logits, so the names, shapes, config
    fields, activation and where each placement acts (Pfeiffer: after the
    MLP's residual add; Houlsby: on the attention's and the MLP's outputs)
    are what AdapterHub computes;
  * the other way, adapters made by AdapterHub itself (SeqBnConfig and
    DoubleSeqBnConfig, random weights, save_adapter(use_safetensors=True))
    load into llmft (load_peft_adapter, the peer's --load) with AdapterHub's
    logits.
On the tiny golden checkpoint and (Pfeiffer) the converted SmolLM2-135M.
Tolerance 2e-3 absolute on f32 logits, as the PEFT tests.
"""

import json
import subprocess
import unittest
from pathlib import Path

import adapters
import numpy as np
import torch
import transformers
from adapters import DoubleSeqBnConfig, SeqBnConfig
from transformers import AutoModelForCausalLM

from interop_common import WORK_DIR, convert_smollm2, main
from test_peft_adapter import peft_logits_peer

LOGIT_TOLERANCE = 2e-3
TINY_LLAMA = Path(__file__).resolve().parents[1] / "testdata" / "model" / "tiny_llama"
TINY_IDS = [1, 17, 5, 42, 9, 88, 3, 64]
SMOLLM2_IDS = [1, 504, 3575, 282, 4649, 314, 17, 2]


def run(args):
    result = subprocess.run([peft_logits_peer(), *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"llmft_peft_logits exited {result.returncode}:\n{result.stdout}{result.stderr}")


def logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


class BottleneckAdapterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)
        # The side environment must be the one in use, not .venv's newer stack.
        assert transformers.__version__.startswith("4.57"), transformers.__version__
        print(f"adapters {adapters.__version__}, transformers {transformers.__version__}")

    def llmft_to_adapterhub(self, model_dir: Path, ids, method: str, label: str):
        out_dir = WORK_DIR / f"{label}_{method}"
        run(["--method", method, model_dir, out_dir, *ids])
        ours = np.fromfile(out_dir / "method.f32", dtype=np.float32).reshape(len(ids), -1)
        config = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
        self.assertEqual(config["config"]["mh_adapter"], method == "bottleneck_houlsby")

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        base = logits(model, ids)
        self.assertGreater(float(np.abs(ours - base).max()), 50 * LOGIT_TOLERANCE,
                           f"{label} {method}: the adapter must change the logits")
        adapters.init(model)
        name = model.load_adapter(str(out_dir / "adapter"), use_safetensors=True)
        model.set_active_adapters(name)
        model.eval()
        theirs = logits(model, ids)
        difference = float(np.abs(theirs - ours).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, f"{label} {method}: AdapterHub vs llmft")
        print(f"{label} {method}: |AdapterHub - llmft| = {difference:.3g} (tolerance {LOGIT_TOLERANCE}; "
              f"moved logits by {float(np.abs(ours - base).max()):.3g})")

    def test_llmft_pfeiffer_loads_in_adapterhub(self):
        self.llmft_to_adapterhub(TINY_LLAMA, TINY_IDS, "bottleneck_pfeiffer", "tiny_llama")

    def test_llmft_houlsby_loads_in_adapterhub(self):
        self.llmft_to_adapterhub(TINY_LLAMA, TINY_IDS, "bottleneck_houlsby", "tiny_llama")

    def test_llmft_pfeiffer_of_smollm2_loads_in_adapterhub(self):
        self.llmft_to_adapterhub(convert_smollm2("f32"), SMOLLM2_IDS, "bottleneck_pfeiffer", "smollm2")

    def adapterhub_to_llmft(self, config, label: str):
        ids = TINY_IDS
        torch.manual_seed(11)
        model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA, dtype=torch.float32).eval()
        base = logits(model, ids)
        adapters.init(model)
        model.add_adapter("made_by_adapterhub", config=config)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "made_by_adapterhub" in parameter_name:
                    parameter.copy_(0.2 * torch.randn(parameter.shape))
        model.set_active_adapters("made_by_adapterhub")
        model.eval()
        theirs = logits(model, ids)
        self.assertGreater(float(np.abs(theirs - base).max()), 50 * LOGIT_TOLERANCE, label)
        adapter_dir = WORK_DIR / f"adapterhub_made_{label}"
        model.save_adapter(str(adapter_dir), "made_by_adapterhub", use_safetensors=True)
        out = WORK_DIR / f"adapterhub_made_{label}.f32"
        run(["--load", TINY_LLAMA, adapter_dir, out, *ids])
        ours = np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)
        difference = float(np.abs(ours - theirs).max())
        self.assertLessEqual(difference, LOGIT_TOLERANCE, f"llmft with AdapterHub's {label} adapter")
        print(f"adapterhub-made {label}: |llmft - AdapterHub| = {difference:.3g} (tolerance {LOGIT_TOLERANCE})")

    def test_adapterhub_made_pfeiffer_loads_in_llmft(self):
        self.adapterhub_to_llmft(SeqBnConfig(reduction_factor=4, non_linearity="relu"), "seq_bn")

    def test_adapterhub_made_houlsby_loads_in_llmft(self):
        self.adapterhub_to_llmft(DoubleSeqBnConfig(reduction_factor=8, non_linearity="gelu"), "double_seq_bn")


if __name__ == "__main__":
    main()
