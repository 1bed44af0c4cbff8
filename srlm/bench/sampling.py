"""Decode speed of srlm.sampling.generate against transformers' generate, on the same weights.

Both run greedy decoding of random prompts of equal length (no padding) for a fixed number of new
tokens (no EOS stop), in the same process, with the same threads and weights: a random Llama of the
chosen shape, written with save_model and read back by transformers.LlamaForCausalLM.

Decode tokens/s = B * (N - 1) / (time for N new tokens - time for 1 new token): the prefill and
the first token are subtracted, so the figure is the per-token loop alone. The median of --repeats.
--compile adds generate(..., compile=True); its compilation happens in the untimed warm-up run.

"matmul-only tok/s" is the speed of a step that did nothing but the model's matrix multiplies (its
own weights, the same kernels, the same threads; see matmul_only_tokens_per_s): an upper bound for
any implementation of the model on this machine, so floor / transformers bounds the ratio.

    python -m srlm.bench.sampling --config tiny 100m --batch-sizes 1 32                  # CPU
    python -m srlm.bench.sampling --config 100m --batch-sizes 32 --dtype bfloat16         # CPU, bf16 both sides
    python -m srlm.bench.sampling --config llama2-7b --batch-sizes 1 64 --device cuda \\
        --dtype bfloat16 --no-hf --peak-bandwidth-gbs 3350                             # H100 roofline
    python -m srlm.bench.sampling --model runs/smollm2 --batch-sizes 1 16              # a real checkpoint

--model reads a real Hugging Face checkpoint instead (srlm and transformers each load the folder;
e.g. SmolLM2-135M-Instruct from `python -m srlm.smollm2`); the prompts are still random ids.

At batch 1 on a GPU, decoding is bound by reading the weights once per token, so the roofline
fraction is weight bytes * tokens/s / peak memory bandwidth. Results are printed as a table and
appended as JSON lines to --out.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from srlm.io import append_jsonl
from srlm.loading import parse_dtype
from srlm.checkpoint import save_model
from srlm.model import Llama, ModelArgs
from srlm.sampling import generate

CONFIGS = {
    "tiny": dict(preset="tiny"),  # 2 layers, dim 64, vocab 512
    "100m": dict(preset="tiny", dim=768, n_layers=8, n_heads=12, n_kv_heads=12, vocab_size=32000,
                 multiple_of=256, max_seq_len=1024),  # ~106M parameters, Llama-2 vocabulary
    "llama2-7b": dict(preset="llama2-7b", max_seq_len=2048),
}


def build_model(config: str, dtype, device) -> Llama:
    if config not in CONFIGS:  # a checkpoint folder (--model)
        from srlm.checkpoint import load_model

        return load_model(config, dtype=dtype, device=device).eval()
    spec = dict(CONFIGS[config])
    args = ModelArgs.preset(spec.pop("preset"), **spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = Llama(args)
    return model.to(dtype).eval()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def decode_tokens_per_s(runners: dict, batch: int, new_tokens: int, device, repeats: int) -> dict:
    """runners[name](n) generates n new tokens for the batch. Decode tokens/s per runner: the
    difference between n=new_tokens and n=1 is the decode loop alone. The runners are timed in
    turn within each repeat (so a busy machine slows them alike), and the median is kept."""
    for run in runners.values():  # warm-up
        run(new_tokens)
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(timed(lambda: run(new_tokens), device) - timed(lambda: run(1), device))
    return {name: batch * (new_tokens - 1) / statistics.median(t) for name, t in times.items()}


def matmul_only_tokens_per_s(model, batch: int, device, repeats: int, steps: int = 5) -> tuple[float, float]:
    """The decode speed of a step that did nothing but its matrix multiplies: every nn.Linear of the
    model (wq wk wv wo w1 w2 w3 per layer, then the vocabulary projection), in model order, on a
    (batch, in_features) input, with the model's own weights (so they stream from memory as in a real
    step). Attention, norms, sampling and Python are left out, so no implementation of this model
    with these kernels decodes faster. Returns (tokens/s, GFLOP/s achieved by the multiplies)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    w = model.output.weight
    inputs = [torch.randn(batch, lin.in_features, dtype=w.dtype, device=device) for lin in linears]

    def step():
        with torch.inference_mode():
            for lin, x in zip(linears, inputs):
                torch.nn.functional.linear(x, lin.weight)

    step()  # warm-up
    seconds = statistics.median(timed(lambda: [step() for _ in range(steps)], device) / steps for _ in range(repeats))
    flops = 2 * batch * sum(lin.weight.numel() for lin in linears)
    return batch / seconds, flops / seconds / 1e9


def ours_runner(model, prompts, compile=False):
    ids = prompts.tolist()
    return lambda n: generate(model, ids, n, eos_id=None, compile=compile)


def hf_runner(hf, prompts):
    mask = torch.ones_like(prompts)

    def run(n):
        with torch.no_grad():
            hf.generate(prompts, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        eos_token_id=None, pad_token_id=0)

    return run


def load_hf(model, dtype, device, folder=None):
    import transformers

    if folder is not None:
        return transformers.LlamaForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tmp)
        hf = transformers.LlamaForCausalLM.from_pretrained(tmp, torch_dtype=dtype)
    return hf.to(device).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", nargs="+", default=["tiny", "100m"], choices=sorted(CONFIGS))
    p.add_argument("--model", help="a Hugging Face checkpoint folder to time instead of --config")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="the same for both sides (default float32, comparable on any device)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--compile", action="store_true", help="also time generate(..., compile=True)")
    p.add_argument("--peak-bandwidth-gbs", type=float, help="device memory bandwidth (H100 SXM: 3350 GB/s)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="bench_sampling.jsonl", help="JSON lines of results (appended)")
    args = p.parse_args(argv)

    dtype = parse_dtype(args.dtype, args.device)
    configs = [args.model] if args.model else args.config
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device {args.device} ({machine}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"dtype {args.dtype}, prompt {args.prompt_len}, new tokens {args.new_tokens}")
    header = ["config", "params", "batch", "ours tok/s"] + (["compiled tok/s"] if args.compile else []) + [
        "transformers tok/s", "ratio"] + (["compiled ratio"] if args.compile else []) + [
        "matmul-only tok/s (GFLOP/s)", "roofline"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for config in configs:
        model = build_model(config, dtype, args.device)
        hf = None if args.no_hf else load_hf(model, dtype, args.device, args.model)
        n_params = model.num_params()
        weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
        for batch in args.batch_sizes:
            g = torch.Generator().manual_seed(batch)
            prompts = torch.randint(3, model.args.vocab_size, (batch, args.prompt_len), generator=g)
            runners = {"ours": ours_runner(model, prompts)}
            if args.compile:
                runners["compiled"] = ours_runner(model, prompts, compile=True)
            if hf is not None:
                runners["transformers"] = hf_runner(hf, prompts.to(args.device))
            speed = decode_tokens_per_s(runners, batch, args.new_tokens, args.device, args.repeats)
            ours, compiled, theirs = speed["ours"], speed.get("compiled"), speed.get("transformers")
            floor, floor_gflops = matmul_only_tokens_per_s(model, batch, args.device, args.repeats)
            roofline = (weight_bytes * ours / batch / (args.peak_bandwidth_gbs * 1e9)
                        if args.peak_bandwidth_gbs and batch == 1 else None)
            row = {"config": config, "params": n_params, "batch": batch, "device": args.device, "machine": machine,
                   "threads": torch.get_num_threads(), "dtype": args.dtype, "prompt_len": args.prompt_len,
                   "new_tokens": args.new_tokens, "ours_tok_s": ours, "compiled_tok_s": compiled,
                   "transformers_tok_s": theirs, "ratio": ours / theirs if theirs else None,
                   "compiled_ratio": compiled / theirs if compiled and theirs else None,
                   "matmul_only_tok_s": floor, "matmul_only_gflops": floor_gflops,
                   "roofline_fraction": roofline, "torch": torch.__version__}
            append_jsonl(args.out, [row])
            fmt = lambda x, f="{:.0f}": f.format(x) if x is not None else "-"
            cells = [config, f"{n_params / 1e6:.1f}M", batch, fmt(ours)] + ([fmt(compiled)] if args.compile else []) + [
                fmt(theirs), fmt(row["ratio"], "{:.2f}x")] + (
                [fmt(row["compiled_ratio"], "{:.2f}x")] if args.compile else []) + [
                f"{floor:.0f} ({floor_gflops:.0f})", fmt(roofline, "{:.0%}")]
            print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        del model, hf


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.bench.sampling")  # a bad --model: one line, exit 2
