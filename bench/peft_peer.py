#!/usr/bin/env python3
"""PyTorch 2 + PEFT peer of bench/lora_train_bench.cc: tokens/s of complete
training steps (zero_grad, forward, cross-entropy, backward, AdamW step) for
the same three configurations, the same token ids and the same LoRA config.

  small-lora    LlamaForCausalLM(hidden 256, intermediate 768, 4 layers,
                8 / 4 KV heads, vocab 4096, untied head), random init;
                LoRA r 8, alpha 16, dropout 0 on q, k, v, o, gate, up, down
  small-full    the same model, every parameter trained
  smollm2-lora  SmolLM2-135M from a converted HF directory (--model DIR)

Setup (the fastest reasonable eager PyTorch on a CPU): fp32,
torch.set_num_threads(--threads, default 2), attention "sdpa" (PyTorch's fused
scaled_dot_product_attention; --attn eager for transformers' matmul+softmax),
torch.optim.AdamW(fused=True) with its defaults (lr 1e-4 here, weight decay
0.01), zero_grad(set_to_none=True). The loss is F.cross_entropy over the
logits against the next-token targets (the same targets as llmft, not
transformers' internal shift, which would drop the last position).
--compile wraps the model in torch.compile (inductor, default mode) and is
reported as a separate column by run_cpu_peers.sh (small Llama on this VM: 43 s
to compile cold, 7 s from the inductor cache, 1.01-1.16x eager's tokens/s;
bench/RESULTS.md).

Token ids: SplitMix64(i) mod vocab over B x (T + 1) positions, as
lora_train_bench.cc.

usage: .venv/bin/python bench/peft_peer.py --config small-lora [--model DIR]
       [--batch 4] [--seq 256] [--warmup 2] [--steps 10] [--attn sdpa|eager] [--compile]
Prints the step times and one "RESULT ..." line.

GPU mode, the peer of bench/gpu_lora_bench.cc (run together by
bench/run_gpu_peers.sh): --config tinyllama-1.1b (or tiny, the CPU smoke
shape) with --device cuda --dtype bf16: the TinyLlama-1.1B shape in bf16
built directly on the device (random init), LoRA r 8 / alpha 16 / dropout 0
on all seven linears with PEFT's default fp32 adapter weights (as llmft's fp32
masters), torch.optim.AdamW(fused=True), the loss on logits.float().
--attn sdpa (PyTorch picks its flash / memory-efficient kernel) or
flash_attention_2 (needs the flash-attn package); --gradient-checkpointing
(non-reentrant) matches gpu_lora_bench --recompute.

Activation checkpointing on the CPU configs (the peer of lora_train_bench
--recompute): --checkpointing full (transformers' non-reentrant gradient
checkpointing of every decoder layer) or selective (the same, with PyTorch's
selective activation checkpointing policy saving matmul and attention
outputs: selective_checkpoint_context). The RESULT line's step_peak_mib is
the process's peak RSS during a timed step above its RSS at the step's start
(VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS): the
activations and scratch of the step, as lora_train_bench's allocator peak.
It is exact only with --memory-pass (exact_rss: glibc otherwise keeps freed
large blocks, which the next step reuses unseen), which slows the steps: time
and memory come from separate runs. The largest over the timed steps is
reported. The RESULT line adds MFU
with gpu_lora_bench's FLOP convention (4 N + 6 N_lora + 6 L T d_attn per
token, causal) against --peak-tflops (default 989, H100 SXM dense bf16) and
torch.cuda.max_memory_allocated.
"""
import argparse
import contextlib
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

MASK64 = (1 << 64) - 1


def splitmix64(value):
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def token_ids(batch, seq, vocab):
    inputs = [[splitmix64(s * (seq + 1) + t) % vocab for t in range(seq)] for s in range(batch)]
    targets = [[splitmix64(s * (seq + 1) + t + 1) % vocab for t in range(seq)] for s in range(batch)]
    return torch.tensor(inputs, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def build_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.config in GPU_SHAPES:
        config = LlamaConfig(**GPU_SHAPES[args.config], tie_word_embeddings=False, rms_norm_eps=1e-5,
                             rope_theta=10000.0, max_position_embeddings=max(args.seq, 2048))
        config._attn_implementation = args.attn
        torch.manual_seed(1)
        # Built in place on the device and in the compute dtype: a 1.1B model
        # initialised on the host and then moved would take longer than the run.
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(DTYPES[args.dtype])
        with torch.device(args.device):
            model = LlamaForCausalLM(config)
        torch.set_default_dtype(previous_dtype)
    elif args.config == "smollm2-lora":
        model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=args.attn)
    else:
        config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=4, vocab_size=4096, max_position_embeddings=256,
                             tie_word_embeddings=False, rms_norm_eps=1e-6)
        config._attn_implementation = args.attn
        torch.manual_seed(1)
        model = LlamaForCausalLM(config)
    model.config.use_cache = False
    if args.config.endswith("-lora"):
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
        model = get_peft_model(model, lora_config)
    if args.checkpointing != "none":
        kwargs = {"use_reentrant": False}
        if args.checkpointing == "selective":
            kwargs["context_fn"] = selective_checkpoint_context
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    return model


def selective_checkpoint_context():
    """PyTorch's selective activation checkpointing (torch.utils.checkpoint,
    2.4+) with the trade llmft's SELECTIVE makes (Megatron's selective
    recompute): the outputs of the matmuls (q, k, v, o, gate, up, down and the
    LoRA products) and of attention are saved, everything else (RMSNorm, RoPE,
    SiLU, the products of SwiGLU, residual adds) is recomputed in the backward."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    saved = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.matmul.default}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
        if hasattr(aten, name):
            saved.add(getattr(aten, name).default)

    def policy(context, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def rss_bytes(field):
    """VmRSS or VmHWM (the peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def exact_rss():
    """Makes RSS follow PyTorch's live CPU memory: glibc serves large blocks
    with mmap() only below a threshold that it raises each time such a block
    is freed, after which freed blocks stay in the heap and a step reuses
    memory the RSS already counts. A fixed 64 KiB threshold (mallopt
    M_MMAP_THRESHOLD, which also stops the adjustment) and trimming at 64 KiB
    return every large block at free(). More page faults: for --memory-pass
    runs, not for timing."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if libc.mallopt(m_mmap_threshold, 64 << 10) != 1 or libc.mallopt(m_trim_threshold, 64 << 10) != 1:
        raise RuntimeError("mallopt refused the thresholds")


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux: "5" into /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


# The shapes of bench/gpu_lora_bench.cc (TinyLlama/TinyLlama-1.1B config.json; tiny: its CPU smoke shape).
GPU_SHAPES = {
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def step_flops(config, lora_params, batch, seq):
    """FLOPs of one step in gpu_lora_bench.cc's convention: per token 4 N (frozen
    matmul weights, LM head included) + 6 N_lora + 6 L T d_attn (causal attention)."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    matmul_params = layers * (d * (q + 2 * kv) + q * d + 3 * d * inter) + config.vocab_size * d
    per_token = 4 * matmul_params + 6 * lora_params + 6 * layers * seq * q
    return per_token * batch * seq


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True,
                        choices=["small-lora", "small-full", "smollm2-lora", "tinyllama-1.1b", "tiny"])
    parser.add_argument("--model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--compile", action="store_true")
    # GPU mode (tinyllama-1.1b / tiny): see the module docstring.
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--gradient-checkpointing", action="store_true", help="the same as --checkpointing full")
    parser.add_argument("--memory-pass", action="store_true",
                        help="make RSS follow live memory (exact_rss) for step_peak_mib; slows the steps")
    parser.add_argument("--checkpointing", choices=["none", "full", "selective"], default="none",
                        help="full: transformers' gradient checkpointing (non-reentrant) of every decoder layer; "
                             "selective: the same with selective_checkpoint_context's policy")
    parser.add_argument("--autocast", choices=["bf16"],
                        help="CPU configs: forward and loss under torch.autocast('cpu', dtype=torch.bfloat16), "
                             "fp32 weights and AdamW (PyTorch's mixed precision on a CPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    gpu_mode = args.config in GPU_SHAPES
    if args.gradient_checkpointing:
        args.checkpointing = "full"
    if not gpu_mode and args.device != "cpu":
        sys.exit("peft_peer.py: --device cuda is for --config tinyllama-1.1b or tiny")
    if gpu_mode and args.autocast:
        sys.exit("peft_peer.py: --autocast is for the CPU configs (the GPU configs use --dtype)")
    if args.config == "smollm2-lora" and not args.model:
        sys.exit("peft_peer.py: smollm2-lora needs --model DIR")
    torch.set_num_threads(args.threads)
    if args.memory_pass:
        exact_rss()

    model = build_model(args)
    vocab = model.config.vocab_size
    inputs, targets = token_ids(args.batch, args.seq, vocab)
    inputs, targets = inputs.to(args.device), targets.to(args.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    forward = torch.compile(model) if args.compile else model

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.autocast == "bf16"
                else contextlib.nullcontext())

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(input_ids=inputs).logits
            if gpu_mode:
                logits = logits.float()  # the loss in fp32, as llmft's cross-entropy
            loss = F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        loss.backward()
        optimizer.step()
        return loss.item()

    if gpu_mode and args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first_loss = None
    start = time.perf_counter()
    for step in range(args.warmup):
        loss = train_step()
        if first_loss is None:
            first_loss = loss
    warmup_seconds = time.perf_counter() - start
    times = []
    step_peak = 0  # the most any timed step's RSS rose above its start (CPU: activations and workspace)
    for step in range(args.steps):
        if not gpu_mode:
            reset_peak_rss()
            resident = rss_bytes("VmRSS")
        start = time.perf_counter()
        loss = train_step()
        times.append(time.perf_counter() - start)
        if not gpu_mode:
            step_peak = max(step_peak, rss_bytes("VmHWM") - resident)
        if first_loss is None:
            first_loss = loss

    tokens = args.batch * args.seq
    best, median = min(times), statistics.median(times)
    side = "pytorch-compile" if args.compile else "pytorch"
    if gpu_mode:
        # loss.item() in train_step has drained the stream, so the times are complete.
        flops = step_flops(model.config, sum(p.numel() for p in trainable), args.batch, args.seq)
        peak = args.peak_tflops * 1e12
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
        device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        print(f"peft_peer {args.config} on {device_name}: torch {torch.__version__}, {args.dtype}, attention "
              f"{args.attn}{', gradient checkpointing' if args.checkpointing != 'none' else ''}"
              f"{', torch.compile' if args.compile else ''}; batch {args.batch} x seq {args.seq}; "
              f"{args.warmup} warm-up ({warmup_seconds:.1f} s) + {args.steps} timed steps")
        print("step times (s): " + " ".join(f"{t:.4f}" for t in times))
        print(f"tokens/s best {tokens / best:.0f}, median {tokens / median:.0f}; MFU best "
              f"{100 * flops / best / peak:.1f}% of {args.peak_tflops:.0f} TFLOP/s; peak memory {peak_gib:.2f} GiB; "
              f"loss first {first_loss:.4f}, last {loss:.4f} (ln V = {math.log(vocab):.4f})")
        print(f"RESULT side={side} config={args.config} device={args.device} dtype={args.dtype} batch={args.batch} "
              f"seq={args.seq} recompute={int(args.checkpointing != 'none')} tokens_per_s_best={tokens / best:.1f} "
              f"tokens_per_s_median={tokens / median:.1f} step_s_best={best:.4f} mfu_best={flops / best / peak:.4f} "
              f"mfu_median={flops / median / peak:.4f} peak_gib={peak_gib:.2f} loss_first={first_loss:.4f} "
              f"loss_last={loss:.4f}")
        return
    n_trainable = sum(p.numel() for p in trainable)
    print(f"peft_peer {args.config}: torch {torch.__version__}, {torch.get_num_threads()} threads, attention "
          f"{args.attn}{', torch.compile' if args.compile else ''}"
          f"{', torch.autocast bf16' if args.autocast else ''}"
          f"{f', checkpointing {args.checkpointing}' if args.checkpointing != 'none' else ''}; trainable {n_trainable / 1e6:.3f}M; batch "
          f"{args.batch} x seq {args.seq}; {args.warmup} warm-up ({warmup_seconds:.1f} s) + {args.steps} timed steps")
    print("step times (s): " + " ".join(f"{t:.3f}" for t in times))
    print(f"tokens/s best {tokens / best:.0f}, median {tokens / median:.0f}; loss first {first_loss:.4f}, "
          f"last {loss:.4f} (ln V = {math.log(vocab):.4f}); step peak RSS above the step's start "
          f"{step_peak / 2**20:.1f} MiB")
    print(f"RESULT side={side} config={args.config} dtype={args.autocast or 'f32'} tokens_per_s_best={tokens / best:.1f} "
          f"tokens_per_s_median={tokens / median:.1f} step_s_best={best:.4f} loss_first={first_loss:.4f} "
          f"loss_last={loss:.4f} recompute={args.checkpointing} step_peak_mib={step_peak / 2**20:.1f}")


if __name__ == "__main__":
    main()
