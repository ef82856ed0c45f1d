"""What the fine-tune interop tests share (test_finetune_export.py,
test_tp_export.py, test_llamacpp_lora.py): the short chats they train on as
an llmft dataset, their LoRA run config, llmft's logits through the peers
built beside llmft_logits, and transformers' logits."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch

from interop_common import run_llmft


def build_peer(name: str) -> str:
    """A test peer beside llmft_logits in the build tree."""
    logits = Path(os.environ["LLMFT_LOGITS"])
    return str(logits if name == "llmft_logits" else logits.parents[1] / "peft" / name)


def read_logits(path: Path, rows: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32).reshape(rows, -1)


def transformers_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def conversations():
    """Short chats with one fixed answer style, enough for a few optimizer steps."""
    cities = ["Lyon", "Porto", "Graz", "Turku", "Gent", "Bergen", "Split", "Cork"]
    for index, city in enumerate(cities * 3):
        yield {"messages": [
            {"role": "user", "content": f"Where does record {index} live?"},
            {"role": "assistant", "content": f"RECORD {index}: city={city.upper()}"},
        ]}


def build_chats(data_dir: Path, tokenizer_dir: Path) -> Path:
    """conversations() as an llmft dataset (messages, assistant-only loss); returns its one shard."""
    data_dir.mkdir(parents=True, exist_ok=True)
    jsonl = data_dir / "chats.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in conversations()))
    run_llmft("data", "build", "--input", str(jsonl), "--tokenizer", str(tokenizer_dir), "--output",
              str(data_dir / "train"), "--shards", "1", "--format", "messages")
    return data_dir / "train-00000-of-00001.tfrecord"


def lora_run_config(base_dir: Path, train_file: Path, run_dir: Path, *, lr: float = 3e-3, dropout: float = 0.0,
                    extra: str = "") -> str:
    """A few LoRA steps (r 8, alpha 16, every linear) at a high lr, so that B moves."""
    return f"""
model {{ hf_dir: "{base_dir}" }}
peft {{ lora {{ r: 8 alpha: 16 dropout: {dropout} target_modules: ["all-linear"] }} }}
data {{ train_files: "{train_file}" seq_len: 64 batch_size: 2 seed: 7 }}
optimizer {{ lr: {lr} weight_decay: 0.0 }}
schedule {{ kind: CONSTANT total_steps: 4 }}
checkpoint {{ dir: "{run_dir}/checkpoints" keep_last: 1 }}
{extra}"""


def llmft_logits(model_dir: Path, out: Path, ids, adapter_dir: Path | None = None) -> np.ndarray:
    """llmft's logits on `ids` of the model (llmft_logits), or of an exported
    adapter loaded onto it (llmft_peft_logits --load), written to `out`."""
    if adapter_dir is None:
        command = [build_peer("llmft_logits"), str(model_dir), str(out)]
    else:
        command = [build_peer("llmft_peft_logits"), "--load", str(model_dir), str(adapter_dir), str(out)]
    subprocess.run([*command, *map(str, ids)], check=True, capture_output=True)
    return read_logits(out, len(ids))
