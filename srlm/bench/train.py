"""Training throughput of srlm's SFT and DPO steps: tokens/s, and model FLOPs utilisation on GPU.

Each row times full optimizer steps (forward, backward, gradient clipping, AdamW) through the very
functions train.py uses (srlm.trainer.step_losses on a LogprobModel, FSDP2 under torchrun), on
random tokens: every sequence is --seq-len tokens, the first half prompt (no loss), the second half
response. A DPO step runs chosen and rejected together, so it processes 2 * --batch-size sequences.
Two variants, measured in the same run:
  plain    attention via PyTorch SDPA, head log-probs via the full-logits formula (the baseline)
  kernels  attention and head log-probs via kernels/ (Triton on CUDA; on CPU the chunked PyTorch
           log-probs, and SDPA attention, since the Triton kernels need a GPU)

    python -m srlm.bench.train                                                     # CPU, small configs
    python -m srlm.bench.train --config 1b --stage sft dpo --batch-size 8 --micro-batch-size 4 \\
        --seq-len 2048 --device cuda --dtype bf16 --activation-checkpointing        # one H100
    torchrun --nproc_per_node 8 -m srlm.bench.train --config 1b --device cuda ...   # FSDP2

MFU = achieved model FLOP/s / peak FLOP/s (PaLM, appendix B): per token processed,
    flops = 6 * N + 12 * n_layers * dim * T
N = parameters in matmuls (all but the token embedding table); 6N = forward (2N) + backward (4N);
12 * L * d * T = attention scores and weighted values, forward + backward, with no discount for the
causal mask; recomputation under activation checkpointing is not counted (it is overhead).
The peak is --peak-tflops per GPU (default 989 = H100 SXM dense bf16). Results: a table on stdout,
JSON lines appended to --out.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from srlm import dist as sdist
from srlm.io import append_jsonl
from srlm.loading import default_dtype, parse_dtype
from srlm.logprobs import LogprobModel
from srlm.model import Llama, ModelArgs
from srlm.fsdp import shard_model
from srlm.trainer import TrainConfig, grad_norm_and_clip, step_losses

CONFIGS = {
    "tiny": dict(preset="tiny"),  # 2 layers, dim 64, vocab 512
    "small": dict(preset="tiny", dim=256, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=32000,
                  multiple_of=256, max_seq_len=2048),  # ~22M parameters, Llama-2 vocabulary
    "1b": dict(preset="tiny", dim=2048, n_layers=18, n_heads=16, n_kv_heads=16, vocab_size=32000,
               hidden_dim=5632, max_seq_len=4096),  # ~1.04B parameters, Llama-2 shapes
}


def model_flops_per_token(args: ModelArgs, n_params: int, seq_len: int) -> float:
    matmul_params = n_params - args.vocab_size * args.dim  # the embedding lookup is not a matmul
    return 6 * matmul_params + 12 * args.n_layers * args.dim * seq_len


def random_examples(stage: str, n: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    half = seq_len // 2
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (2, seq_len), generator=g).tolist()
        mask = [0] * half + [1] * (seq_len - half)
        if stage == "dpo":
            rejected = ids[0][:half] + ids[1][half:]  # same prompt, another answer
            out.append({"index": i, "chosen_tokens": ids[0], "chosen_mask": mask, "rejected_tokens": rejected,
                        "rejected_mask": mask, "ref_chosen_logps": 0.0, "ref_rejected_logps": 0.0})
        else:
            out.append({"tokens": ids[0], "loss_mask": mask})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_step(a, config: str, stage: str, variant: str, rank: int, world: int, device: torch.device):
    """Model + optimizer + data for one variant; returns (run_one_step, row describing it)."""
    spec = dict(CONFIGS[config])
    on_gpu = device.type == "cuda"
    attn = "triton" if (variant == "kernels" and on_gpu) else "sdpa"
    logprob_impl = "torch" if variant == "plain" else ("triton" if on_gpu else "chunked")
    args = ModelArgs.preset(spec.pop("preset"), **spec, attn_impl=attn)
    dtype = parse_dtype(a.dtype, device)
    torch.manual_seed(0)
    model = Llama(args)
    n_params = model.num_params()
    if a.activation_checkpointing:
        from srlm.fsdp import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    wrapped = LogprobModel(model.to(device), impl=logprob_impl)
    if world > 1:
        shard_model(wrapped, device, world, dtype)
    use_autocast = dtype != torch.float32 and world == 1

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=use_autocast)

    cfg = TrainConfig(stage=stage, data=[], out="-", model_config="bench", tokenizer="-",
                      batch_size=a.batch_size, micro_batch_size=a.micro_batch_size)
    examples = random_examples(stage, a.batch_size, a.seq_len, args.vocab_size, seed=1)
    params = list(wrapped.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95))
    idx = list(range(a.batch_size))

    def step():
        step_losses(wrapped, cfg, examples, idx, rank, world, 0, device, autocast)
        grad_norm_and_clip(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    row = {"config": config, "params_m": round(n_params / 1e6, 1), "stage": stage, "variant": variant,
           "attn": attn, "logprobs": logprob_impl, "device": device.type, "world_size": world,
           "dtype": a.dtype, "batch": a.batch_size, "micro_batch": a.micro_batch_size, "seq_len": a.seq_len,
           "activation_checkpointing": a.activation_checkpointing,
           "flops_per_token": model_flops_per_token(args, n_params, a.seq_len)}
    return step, row


def timed_step(step, device) -> float:
    sync(device)
    sdist.barrier()
    t0 = time.perf_counter()
    step()
    sync(device)
    sdist.barrier()
    return time.perf_counter() - t0


def bench(a, config: str, stage: str, rank: int, world: int, device: torch.device) -> list[dict]:
    """Time every variant of one (config, stage), interleaving their steps so that a busy machine
    slows them alike; each reports the median step time."""
    setups = [build_step(a, config, stage, v, rank, world, device) for v in a.variant]
    for step, _ in setups:
        for _ in range(a.warmup):
            step()
    times = [[] for _ in setups]
    for _ in range(a.steps):
        for i, (step, _) in enumerate(setups):
            times[i].append(timed_step(step, device))
    rows = []
    for (_, row), t in zip(setups, times):
        dt = statistics.median(t)
        seqs = a.batch_size * (2 if stage == "dpo" else 1)
        row["ms_per_step"] = round(dt * 1000, 1)
        row["tokens_per_s"] = round(seqs * a.seq_len / dt, 1)
        if device.type == "cuda":
            row["mfu"] = round(row["flops_per_token"] * row["tokens_per_s"] / (a.peak_tflops * 1e12 * world), 4)
        rows.append(row)
    if device.type == "cuda":
        rows[-1]["peak_mem_gib_all_variants"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    base = next((r["tokens_per_s"] for r in rows if r["variant"] == "plain"), None)
    for r in rows:
        r["speedup_vs_plain"] = round(r["tokens_per_s"] / base, 2) if base else None
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="Training-step throughput (tokens/s, MFU) of srlm's SFT and DPO")
    p.add_argument("--config", nargs="+", default=["tiny", "small"], choices=sorted(CONFIGS))
    p.add_argument("--stage", nargs="+", default=["sft", "dpo"], choices=["sft", "dpo"])
    p.add_argument("--variant", nargs="+", default=["plain", "kernels"], choices=["plain", "kernels"])
    p.add_argument("--batch-size", type=int, default=4, help="sequences (DPO: pairs) per step, all ranks")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s of one GPU")
    p.add_argument("--out", default=None, help="append results as JSON lines here")
    a = p.parse_args(argv)
    rank, world, device = sdist.init_distributed(a.device)
    a.dtype = a.dtype or {torch.bfloat16: "bf16", torch.float32: "fp32"}[default_dtype(device)]  # named in the table
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    if sdist.is_main():
        print(f"# {machine}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, world size {world}")
    rows = []
    for config in a.config:
        for stage in a.stage:
            for row in bench(a, config, stage, rank, world, device):
                row["machine"] = machine
                rows.append(row)
                if sdist.is_main():
                    print_row(row, header=len(rows) == 1)
    if a.out and sdist.is_main():
        append_jsonl(a.out, rows)
    return rows


COLUMNS = ["config", "params_m", "stage", "variant", "world_size", "dtype", "seq_len", "batch", "ms_per_step",
           "tokens_per_s", "speedup_vs_plain", "mfu"]


def print_row(row: dict, header: bool) -> None:
    if header:
        print(" | ".join(COLUMNS))
        print(" | ".join("---" for _ in COLUMNS))
    print(" | ".join(str(row.get(c, "")) for c in COLUMNS), flush=True)


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.bench.train")  # bad input: one line, exit 2; ends the process group
