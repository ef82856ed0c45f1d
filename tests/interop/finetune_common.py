"""What the fine-tune interop tests share (test_finetune_export.py,
test_tp_export.py): the llmft peers built beside llmft_logits, their logits
files, transformers' logits, and the short chats they train on."""

import os
from pathlib import Path

import numpy as np
import torch


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
