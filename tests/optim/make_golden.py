#!/usr/bin/env python3
"""Golden trajectories for tests/optim/ from PyTorch itself.

Run from the repository root:  .venv/bin/python tests/optim/make_golden.py
Writes tests/testdata/optim/{adamw,grad_scaler,clip_grad_norm}.json.

- AdamW: torch.optim.AdamW (foreach=False, i.e. _single_tensor_adamw) on small
  f32 tensors with fixed gradient sequences; learning rates from transformers'
  schedule functions driven through torch's LambdaLR, the way a HF Trainer
  run steps them (the lr of each step is recorded).
- GradScaler: the real update of torch.amp.GradScaler, torch._amp_update_scale_
  (it runs on CPU tensors), driven by a given overflow pattern.
- clip_grad_norm_: torch.nn.utils.clip_grad_norm_ (foreach=False).
"""
import json
import os

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "testdata", "optim")
HEADER = {
    "_generated_by": "tests/optim/make_golden.py",
    "_command": ".venv/bin/python tests/optim/make_golden.py",
    "_torch": torch.__version__,
    "_transformers": transformers.__version__,
}


def floats(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def adamw_case(name, shapes, no_decay, steps, lr, betas, eps, weight_decay, schedule, generator):
    params = {n: torch.randn(s, generator=generator, dtype=torch.float32) for n, s in shapes.items()}
    grads = {n: [torch.randn(s, generator=generator, dtype=torch.float32) * (0.1 + step) for step in range(steps)]
             for n, s in shapes.items()}
    tensors = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    decay = [tensors[n] for n in shapes if n not in no_decay]
    plain = [tensors[n] for n in shapes if n in no_decay]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)
    kind, warmup, total = schedule
    if kind == "linear":
        scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    elif kind == "cosine":
        scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total)
    else:
        scheduler = transformers.get_constant_schedule_with_warmup(optimizer, warmup)
    lrs = []
    trajectory = {n: [] for n in shapes}
    for step in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        for n in shapes:
            tensors[n].grad = grads[n][step].clone()
        optimizer.step()
        scheduler.step()
        for n in shapes:
            trajectory[n].append(floats(tensors[n]))
    return {
        "name": name,
        "betas": list(betas), "eps": eps, "weight_decay": weight_decay, "base_lr": lr,
        "schedule": {"kind": kind, "warmup_steps": warmup, "total_steps": total},
        "lrs": lrs,
        "parameters": [{
            "name": n, "shape": list(s), "decay": n not in no_decay, "init": floats(params[n]),
            "grads": [floats(g) for g in grads[n]], "after_step": trajectory[n],
        } for n, s in shapes.items()],
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    generator = torch.Generator().manual_seed(20261125)
    cases = [
        adamw_case("linear_warmup_decay_excluding_norm_and_bias",
                   {"layer.weight": (3, 4), "layer.bias": (4,), "model.norm.weight": (5,)},
                   {"layer.bias", "model.norm.weight"}, 6, 1e-2, (0.9, 0.999), 1e-8, 0.1, ("linear", 2, 6), generator),
        adamw_case("constant_no_decay", {"w": (7,)}, set(), 4, 3e-3, (0.8, 0.99), 1e-6, 0.0,
                   ("constant", 0, 0), generator),
        adamw_case("cosine_warmup_decay_all", {"a": (2, 3), "b": (6,)}, set(), 5, 5e-2, (0.9, 0.999), 1e-8, 0.01,
                   ("cosine", 1, 5), generator),
    ]
    with open(os.path.join(OUT, "adamw.json"), "w") as f:
        json.dump({**HEADER, "cases": cases}, f, indent=1)

    scaler_cases = []
    for name, init, growth, backoff, interval, pattern in [
        ("interval_3", 65536.0, 2.0, 0.5, 3, [0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0]),
        ("defaults_2000", 65536.0, 2.0, 0.5, 2000, [1] * 3 + [0] * 2000 + [1]),
        ("growth_would_overflow", 3.0e38, 2.0, 0.5, 1, [0, 0, 1, 0]),
    ]:
        scale = torch.tensor([init], dtype=torch.float32)
        tracker = torch.tensor([0], dtype=torch.int32)
        scales, trackers = [], []
        for found in pattern:
            found_inf = torch.tensor([float(found)], dtype=torch.float32)
            torch._amp_update_scale_(scale, tracker, found_inf, growth, backoff, interval)
            scales.append(float(scale.item()))
            trackers.append(int(tracker.item()))
        scaler_cases.append({"name": name, "init_scale": init, "growth_factor": growth, "backoff_factor": backoff,
                             "growth_interval": interval, "found_inf": pattern, "scale_after": scales,
                             "growth_tracker_after": trackers})
    # The defaults the C++ LossScaler copies, read from a live GradScaler.
    defaults = torch.amp.GradScaler("cpu")
    with open(os.path.join(OUT, "grad_scaler.json"), "w") as f:
        json.dump({**HEADER, "_update": "torch._amp_update_scale_ (GradScaler.update's kernel), run on CPU",
                   "defaults": {"init_scale": defaults.get_scale(), "growth_factor": defaults.get_growth_factor(),
                                "backoff_factor": defaults.get_backoff_factor(),
                                "growth_interval": defaults.get_growth_interval()},
                   "cases": scaler_cases}, f, indent=1)

    clip_cases = []
    for name, shapes, magnitude, max_norm in [
        ("clipped", [(3, 4), (5,)], 1.0, 1.0),
        ("not_clipped", [(2, 2), (3,)], 0.01, 10.0),
        ("one_tensor_large", [(17,)], 100.0, 0.5),
    ]:
        grads = [torch.randn(s, generator=generator, dtype=torch.float32) * magnitude for s in shapes]
        ps = [torch.zeros(s, requires_grad=True) for s in shapes]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=False)
        clip_cases.append({"name": name, "max_norm": max_norm, "shapes": [list(s) for s in shapes],
                           "grads": [floats(g) for g in grads], "total_norm": float(norm.item()),
                           "clipped_grads": [floats(p.grad) for p in ps]})
    with open(os.path.join(OUT, "clip_grad_norm.json"), "w") as f:
        json.dump({**HEADER, "cases": clip_cases}, f, indent=1)


if __name__ == "__main__":
    main()
