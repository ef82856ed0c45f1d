#!/usr/bin/env python3
"""PyTorch DistributedDataParallel peer of bench/dp_train_bench.cc: data-parallel
training steps of the small Llama on the CPU, N processes on this machine,
gradients all-reduced over gloo.

Model and training as bench/peft_peer.py's small-lora / small-full (its
build_model builds them): LlamaForCausalLM(hidden 256, intermediate 768, 4
layers, 8 / 4 KV heads, vocab 4096, untied head), random init (seed 1 on every
rank; DDP also broadcasts rank 0's weights when it wraps the model), fp32,
attention "sdpa"; small-lora adds LoRA r 8, alpha 16, dropout 0 on q, k, v, o,
gate, up, down; torch.optim.AdamW(fused=True), lr 1e-4, weight decay 0.01. A
step: zero_grad(set_to_none=True), forward, F.cross_entropy on the logits
against the next-token targets, backward (DDP all-reduces the gradients in
buckets of --bucket-mb while backward runs, and the average is in .grad when
backward returns), AdamW step.

Launch: the N ranks are started here with torch.multiprocessing (spawn) and
meet through env:// at MASTER_ADDR=127.0.0.1 on a free port; torchrun is not
needed. GLOO_SOCKET_IFNAME defaults to lo (all ranks are on this machine).
Each rank runs torch.set_num_threads(--threads-per-rank, default 1).
find_unused_parameters=False: every trainable parameter gets a gradient. With
LoRA the frozen base weights have requires_grad False, so DDP reduces only the
adapter weights.

Token ids: each rank trains on its own rows, so the global batch is world x B
rows. Rank r at step s (s counts warm-up and timed steps from 0) takes row b
from positions p .. p + T of SplitMix64(p) mod vocab, p = ((s * world + r) * B
+ b) * (T + 1): inputs the first T, targets the last T. Step 0 of rank 0 is
peft_peer.py's (and lora_train_bench.cc's) batch.

Figures, from rank 0 without barriers: the wall time of each whole step
(zero_grad to the end of AdamW; loss.item() at the end), median and best over
the timed steps; tokens/s per rank B*T / step and for the job world*B*T / step
(median step); allreduce_bytes the bytes DDP reduces per step (the sum of the
trainable parameters' gradient sizes). A "ddp_stats" line adds DDP's own
timers (print_ddp_stats) and the bucket sizes it ended up with.

usage: .venv/bin/python bench/ddp_peer.py --config small-lora|small-full [--world 2]
       [--batch 4] [--seq 256] [--warmup 2] [--steps 10] [--threads-per-rank 1] [--bucket-mb 25]
Prints the step times and one line
  RESULT side=ddp config=... world=... batch=... seq=... step_ms_median=... step_ms_best=...
         tokens_per_s_rank=... tokens_per_s_job=... allreduce_bytes=...
bench/run_dp_peers.sh runs it next to llmft's side and prints the table.
"""
import argparse
import math
import os
import socket
import statistics
import sys
import time
import types
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from peft_peer import build_model, splitmix64

PROGRAM = "ddp_peer.py"
MAX_SEQ = 256  # the small model's max_position_embeddings (bench_util.h small_llama_config)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line "ddp_peer.py: ..." and exit 2, as the C++ benches' parse_number."""

    def error(self, message):
        print(f"{PROGRAM}: {message}", file=sys.stderr)
        sys.exit(2)


def parse_number(flag, text, minimum, maximum=None, integer=True, positive=False):
    """The whole of `text` must be a number in [minimum, maximum] (or > 0 with `positive`), else one line
    "ddp_peer.py: <flag>: expected ..., found '<text>'" and exit 2, as bench_util.h's parse_number."""
    try:
        value = int(text) if integer else float(text)
        valid = (value > 0 if positive else value >= minimum) and (maximum is None or value <= maximum) and \
            math.isfinite(value)
    except ValueError:
        valid = False
    if not valid:
        kind = "an integer" if integer else "a number"
        bound = "> 0" if positive else f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        print(f"{PROGRAM}: {flag}: expected {kind} {bound}, found '{text}'", file=sys.stderr)
        sys.exit(2)
    return value


def parse_args(argv):
    parser = OneLineParser(prog=PROGRAM, description="PyTorch DDP (gloo, CPU) peer of bench/dp_train_bench.cc")
    parser.add_argument("--config", required=True, choices=["small-lora", "small-full"])
    parser.add_argument("--world", default="2", help="number of ranks (processes)")
    parser.add_argument("--batch", default="4", help="rows per rank")
    parser.add_argument("--seq", default="256")
    parser.add_argument("--warmup", default="2")
    parser.add_argument("--steps", default="10")
    parser.add_argument("--threads-per-rank", default="1")
    parser.add_argument("--bucket-mb", help="DDP bucket_cap_mb (default: DDP's own, 25 MiB after a first bucket of 1 MiB)")
    args = parser.parse_args(argv)
    args.world = parse_number("--world", args.world, 1)
    args.batch = parse_number("--batch", args.batch, 1)
    args.seq = parse_number("--seq", args.seq, 1, MAX_SEQ)
    args.warmup = parse_number("--warmup", args.warmup, 0)
    args.steps = parse_number("--steps", args.steps, 1)
    args.threads_per_rank = parse_number("--threads-per-rank", args.threads_per_rank, 1)
    if args.bucket_mb is not None:
        args.bucket_mb = parse_number("--bucket-mb", args.bucket_mb, 0, integer=False, positive=True)
    return args


def rank_batch(rank, world, step, batch, seq, vocab):
    """Rank `rank`'s rows at `step`: disjoint SplitMix64 position ranges (module docstring)."""
    inputs, targets = [], []
    for row in range(batch):
        start = ((step * world + rank) * batch + row) * (seq + 1)
        ids = [splitmix64(start + t) % vocab for t in range(seq + 1)]
        inputs.append(ids[:seq])
        targets.append(ids[1:])
    return torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def run_rank(rank, args):
    # DDP's wrapper asks the model is_gradient_checkpointing, which transformers 5 warns is deprecated.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    torch.set_num_threads(args.threads_per_rank)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=args.world)
    try:
        train(rank, args)
    finally:
        dist.destroy_process_group()


def train(rank, args):
    # peft_peer.build_model reads only these fields for the small configurations.
    model = build_model(types.SimpleNamespace(config=args.config, attn="sdpa", gradient_checkpointing=False,
                                              seq=args.seq, model=None, device="cpu", dtype="f32"))
    vocab = model.config.vocab_size
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    allreduce_bytes = sum(p.numel() * p.element_size() for p in trainable)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb,
                                                          find_unused_parameters=False)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, fused=True)
    total_steps = args.warmup + args.steps
    batches = [rank_batch(rank, args.world, step, args.batch, args.seq, vocab) for step in range(total_steps)]

    def train_step(inputs, targets):
        optimizer.zero_grad(set_to_none=True)
        logits = ddp_model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        loss.backward()  # returns after DDP's bucketed all-reduces have finished
        optimizer.step()
        return loss.item()

    losses, times = [], []
    start = time.perf_counter()
    for step in range(args.warmup):
        losses.append(train_step(*batches[step]))
    warmup_seconds = time.perf_counter() - start
    for step in range(args.warmup, total_steps):
        start = time.perf_counter()
        losses.append(train_step(*batches[step]))
        times.append(time.perf_counter() - start)
    if rank != 0:
        return

    tokens = args.batch * args.seq
    bucket_cap = "default (25, first bucket 1)" if args.bucket_mb is None else f"{args.bucket_mb:g}"
    best, median = min(times), statistics.median(times)
    print(f"ddp_peer {args.config}: torch {torch.__version__}, gloo, world {args.world}, "
          f"{torch.get_num_threads()} thread(s) per rank, attention sdpa; trainable {trainable_count / 1e6:.3f}M "
          f"({allreduce_bytes} bytes all-reduced per step, bucket_cap_mb {bucket_cap}); batch {args.batch} x "
          f"seq {args.seq} per rank; {args.warmup} warm-up ({warmup_seconds:.1f} s) + {args.steps} timed steps")
    print("step times rank 0 (s): " + " ".join(f"{t:.3f}" for t in times))
    print(f"loss rank 0 first {losses[0]:.4f}, last {losses[-1]:.4f} (ln V = {math.log(vocab):.4f})")
    print_ddp_stats(ddp_model)
    print(f"RESULT side=ddp config={args.config} world={args.world} batch={args.batch} seq={args.seq} "
          f"step_ms_median={1e3 * median:.2f} step_ms_best={1e3 * best:.2f} "
          f"tokens_per_s_rank={tokens / median:.1f} tokens_per_s_job={args.world * tokens / median:.1f} "
          f"allreduce_bytes={allreduce_bytes}", flush=True)


def print_ddp_stats(ddp_model):
    """DDP's own timers, averaged by its reducer over the steps it samples (the first ten, warm-up included,
    then every hundredth): forward, backward compute, backward_comm (the window from the first bucket's
    all-reduce start to the last one's end, so not the busy time of the transfers) and the part of that window
    during which backward still computed. A private API: skipped where it is missing."""
    try:
        data = ddp_model._get_ddp_logging_data()
    except Exception:  # noqa: BLE001 - informational, the RESULT line does not depend on it
        return
    keys = ["avg_forward_compute_time", "avg_backward_compute_time", "avg_backward_comm_time",
            "avg_backward_compute_comm_overlap_time"]
    if not all(key in data for key in keys):
        return
    fields = " ".join(f"{key.removeprefix('avg_').removesuffix('_time')}_ms={data[key] / 1e6:.2f}" for key in keys)
    print(f"ddp_stats (DDP reducer timers, mean of sampled steps): {fields} bucket_bytes={bucket_bytes(ddp_model)}")


def bucket_bytes(ddp_model):
    """The bucket sizes in use, in reduction order. DDP starts with one bucket and, with
    find_unused_parameters=False, rebuilds them after the first step in the order the gradients became
    ready, each up to bucket_cap_mb (the logging data's bucket_sizes still shows the first layout)."""
    try:
        buckets = ddp_model.reducer._get_zeros_like_grad_buckets()
        return ",".join(str(b.buffer().numel() * b.buffer().element_size()) for b in buckets)
    except Exception:  # noqa: BLE001 - private API, informational only
        return "?"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    args = parse_args(sys.argv[1:])
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(run_rank, args=(args,), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
