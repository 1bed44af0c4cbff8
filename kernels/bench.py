"""Speed and memory of the kernels in kernels/, each against a PyTorch baseline in the same run.

    python -m kernels.bench                         # everything (attention needs a CUDA GPU)
    python -m kernels.bench --only attention        # TFLOP/s vs SDPA's flash backend, seq 1k-8k
    python -m kernels.bench --only logprobs         # time and peak memory vs the naive log_softmax
    python -m kernels.bench --out bench.jsonl       # also append every figure as a JSON line

Attention: causal, bf16, head_dim 128, 16 heads, batch * seq = 16k tokens; forward and
forward+backward TFLOP/s of flash_attention and of F.scaled_dot_product_attention restricted
to its flash backend. FLOPs are counted the usual FlashAttention way: 4 * B * H * T * S * D
for the forward (halved when causal) and 2.5 times that for the backward.

Log-probs: forward+backward time and peak memory of `linear_logprobs` (Triton),
`linear_logprobs_chunked` (PyTorch), F.linear_cross_entropy (when this torch has it) and the
naive `log_softmax(hidden @ weight.T).gather(...)`, at 16k tokens x vocab 32000 x dim 4096 on
a GPU. Peak memory is what the call needs on top of its inputs (torch.cuda.max_memory_allocated
minus what was allocated before). On CPU (no GPU present) it compares the chunked PyTorch
path with the naive one at 4k x 32000 x 512, memory taken as the rise in peak resident memory.

Goals (H100): attention forward+backward >= 1.0x SDPA flash at seq >= 2k; log-probs at
<= 25% of the naive path's peak memory and <= 1.2x its time.
"""
import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ---------------------------------------------------------------- timing and memory helpers
def time_ms(fn, device, warmup, iters):
    """Median wall time of fn() in milliseconds (CUDA-synchronised on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn, device):
    """Memory fn() needs beyond what is already allocated, in MiB (None if it cannot be measured)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:  # Linux: reset the peak-RSS mark, run, read it again
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _rss_kib("VmRSS")
        fn()
        return (_rss_kib("VmHWM") - before) / 1024
    except OSError:
        return None


def machine_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def print_table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _fmt(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------- attention
def attention_flops(B, H, T, S, D, causal):
    fwd = 4 * B * H * T * S * D * (0.5 if causal else 1.0)
    return fwd, fwd * 3.5  # forward, forward + backward (backward = 2.5 x forward)


def bench_attention(args, records):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels.attention import flash_attention

    dtype = DTYPES[args.dtype]
    rows = []
    for T in args.seqs:
        B = max(1, args.tokens_attn // T)
        H, H_kv, D = args.heads, args.kv_heads or args.heads, args.head_dim
        q = torch.randn(B, H, T, D, device="cuda", dtype=dtype, requires_grad=True)
        k = torch.randn(B, H_kv, T, D, device="cuda", dtype=dtype, requires_grad=True)
        v = torch.randn(B, H_kv, T, D, device="cuda", dtype=dtype, requires_grad=True)
        do = torch.randn(B, H, T, D, device="cuda", dtype=dtype)

        def triton_fwd():
            return flash_attention(q, k, v, causal=True)

        def sdpa_fwd():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != H_kv)

        flops_fwd, flops_all = attention_flops(B, H, T, T, D, causal=True)
        result = {}
        for name, fwd in [("triton", triton_fwd), ("sdpa_flash", sdpa_fwd)]:
            with torch.no_grad():
                ms_fwd = time_ms(fwd, "cuda", args.warmup, args.iters)
            ms_all = time_ms(lambda: torch.autograd.grad(fwd(), (q, k, v), do), "cuda", args.warmup, args.iters)
            result[name] = (flops_fwd / ms_fwd / 1e9, flops_all / ms_all / 1e9)  # TFLOP/s
            records.append({"bench": "attention", "impl": name, "B": B, "H": H, "H_kv": H_kv, "T": T, "D": D,
                            "dtype": args.dtype, "ms_fwd": ms_fwd, "ms_fwd_bwd": ms_all,
                            "tflops_fwd": result[name][0], "tflops_fwd_bwd": result[name][1]})
        (tf, ta), (sf, sa) = result["triton"], result["sdpa_flash"]
        rows.append([str(T), str(B), f"{tf:.0f}", f"{sf:.0f}", f"{tf / sf:.2f}x", f"{ta:.0f}", f"{sa:.0f}",
                     f"{ta / sa:.2f}x"])
        torch.cuda.empty_cache()
    print_table(f"Attention, causal, {args.dtype}, heads {args.heads}, head_dim {args.head_dim}, "
                f"batch x seq = {args.tokens_attn} (TFLOP/s)",
                ["seq", "batch", "triton fwd", "sdpa fwd", "ratio", "triton fwd+bwd", "sdpa fwd+bwd", "ratio"], rows)


# ---------------------------------------------------------------- log-probs
def naive_logprobs(hidden, weight, targets, ignore_index=-100):
    """What the kernel replaces: the full (N x vocab) logits, then log_softmax and a gather."""
    logprobs = torch.log_softmax((hidden @ weight.T).float(), dim=-1)  # (N, vocab) fp32
    valid = targets != ignore_index
    picked = logprobs.gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1)
    return torch.where(valid, picked, 0.0)


def torch_linear_cross_entropy(hidden, weight, targets, ignore_index=-100):
    """PyTorch's own fused op (chunked options when available); log p = -cross-entropy."""
    options = torch.nn.LinearCrossEntropyOptions() if hasattr(torch.nn, "LinearCrossEntropyOptions") else None
    kw = {"options": options} if options is not None else {}
    return -F.linear_cross_entropy(hidden, weight, targets, reduction="none", ignore_index=ignore_index, **kw)


def bench_logprobs(args, device, records):
    from kernels.logprobs import linear_logprobs, linear_logprobs_chunked

    if device == "cuda":
        N, V, D, dtype = args.tokens, args.vocab, args.dim, DTYPES[args.dtype]
        impls = [("naive log_softmax", naive_logprobs), ("linear_logprobs (triton)", linear_logprobs),
                 ("linear_logprobs_chunked", linear_logprobs_chunked)]
    else:
        N, V, D, dtype = args.cpu_tokens, args.vocab, args.cpu_dim, torch.float32
        impls = [("naive log_softmax", naive_logprobs), ("linear_logprobs_chunked", linear_logprobs_chunked)]
    if hasattr(F, "linear_cross_entropy"):
        impls.append(("F.linear_cross_entropy", torch_linear_cross_entropy))

    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(N, D, device=device, dtype=dtype, generator=g).requires_grad_()
    weight = (torch.randn(V, D, device=device, dtype=dtype, generator=g) * D**-0.5).requires_grad_()
    targets = torch.randint(0, V, (N,), device=device, generator=g)
    targets[: N // 4] = -100  # a prompt's worth of ignored positions
    grad = torch.randn(N, device=device, generator=g)

    rows, base_ms, base_mib = [], None, None
    for name, fn in impls:
        def step():
            hidden.grad = weight.grad = None
            fn(hidden, weight, targets).backward(grad)

        try:
            ms = time_ms(step, device, args.warmup, args.iters)
            step()
            hidden.grad = weight.grad = None
            mib = peak_extra_mib(step, device)
        except (RuntimeError, TypeError, NotImplementedError) as e:  # e.g. an op this torch lacks
            rows.append([name, "failed", str(e).splitlines()[0][:60], "", ""])
            continue
        hidden.grad = weight.grad = None
        if base_ms is None:
            base_ms, base_mib = ms, mib
        mem_ratio = None if (mib is None or not base_mib) else mib / base_mib
        rows.append([name, f"{ms:.1f}", f"{ms / base_ms:.2f}x", _fmt(mib, 0), _fmt(mem_ratio, 2) + "x"])
        records.append({"bench": "logprobs", "impl": name, "N": N, "V": V, "D": D, "dtype": str(dtype),
                        "device": device, "ms_fwd_bwd": ms, "peak_extra_mib": mib})
    print_table(f"Log-probs forward+backward, {N} tokens x vocab {V} x dim {D}, {str(dtype).split('.')[-1]}",
                ["implementation", "ms", "time vs naive", "peak extra MiB", "memory vs naive"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["attention", "logprobs"], default=None)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--tokens-attn", type=int, default=16384, help="batch x seq for attention")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: same as --heads")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=16384, help="log-probs tokens on a GPU")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=4096, help="log-probs hidden size on a GPU")
    parser.add_argument("--cpu-tokens", type=int, default=4096)
    parser.add_argument("--cpu-dim", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 on GPU, 1 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="default: 20 on GPU, 3 on CPU")
    parser.add_argument("--out", default=None, help="append results here as JSON lines")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.warmup = args.warmup if args.warmup is not None else (5 if device == "cuda" else 1)
    args.iters = args.iters if args.iters is not None else (20 if device == "cuda" else 3)
    import triton

    print(f"machine: {machine_name(device)}; torch {torch.__version__}, triton {triton.__version__}")
    records = []
    if args.only in (None, "attention"):
        if device == "cuda":
            bench_attention(args, records)
        else:
            print("\nattention: skipped, it needs a CUDA GPU (the Triton interpreter is far too slow to time)")
    if args.only in (None, "logprobs"):
        bench_logprobs(args, device, records)
    if args.out:
        from srlm.io import append_jsonl

        machine = machine_name(device)
        append_jsonl(args.out, [dict(r, machine=machine, torch=torch.__version__) for r in records])
    return records


if __name__ == "__main__":
    main()
