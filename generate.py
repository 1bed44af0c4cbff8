"""The generation steps of a self-rewarding iteration, from the command line: candidate responses, or new prompts.

    # N candidate responses per prompt, in the Llama-2 chat format (paper: N=4, T=0.7, top-p 0.9)
    python generate.py --model out/m1 --task responses --input prompts.jsonl --output candidates.jsonl

    # new prompts by few-shot self-instruction (paper: 8-shot, 6 seed + 2 generated, T=0.6, top-p 0.9)
    python generate.py --model out/m1 --task prompts --seed-pool data/ift.jsonl \\
        --output prompts.jsonl --num-prompts 1000

    # the same on several GPUs: each rank takes a shard of the work, rank 0 writes the output
    torchrun --nproc_per_node 8 generate.py --model out/m1 --task responses --num-candidates 4 ...

Files (JSON lines):
    prompts.jsonl     {"id": str, "prompt": str, "source": str}
    candidates.jsonl  {"id": str, "prompt": str, "candidates": [str, ...]}

Resuming: every finished unit (a prompt's candidates, a self-instruct round) is appended to
`<output>.partial` (`<output>.partial.rank{r}` under torchrun). A rerun after a kill reads these
logs, skips what they hold, and at the end writes `<output>` atomically, in input order, and
removes the logs. When `<output>` already exists its rows count as done too (--overwrite to redo).

A prompt too long for the context (prompt tokens + --max-new-tokens > max_seq_len) is skipped and
counted, never truncated. The run ends by printing a JSON summary line (also returned by main()).

The work is done by srlm/candidates.py (--task responses) and srlm/prompts.py (--task prompts);
this file only turns flags into their settings.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch

from srlm import dist
from srlm.candidates import CandidateSettings, read_prompt_rows, write_candidates
from srlm.chat import FORMATS
from srlm.io import DataError
from srlm.loading import DTYPES, load_for_inference
from srlm.prompts import SelfInstructSettings, read_prompt_pool, write_prompts
from srlm.sampling import check_sampling

TASK_DEFAULTS = {  # paper settings per task; flags override them
    "responses": dict(temperature=0.7, top_p=0.9, max_new_tokens=512),
    "prompts": dict(temperature=0.6, top_p=0.9, max_new_tokens=128),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="Hugging Face model directory (config.json + safetensors)")
    p.add_argument("--tokenizer", help="tokenizer.model or tokenizer.json (default: the one inside --model)")
    p.add_argument("--chat", choices=sorted(FORMATS),
                   help="chat format (default: the checkpoint's chat template, else llama2)")
    p.add_argument("--task", required=True, choices=["responses", "prompts"])
    p.add_argument("--input", help="prompts.jsonl (--task responses)")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true", help="redo everything, ignoring an existing output")
    g = p.add_argument_group("sampling")
    g.add_argument("--n", "--num-candidates", dest="n", type=int, default=4,
                   help="candidates per prompt (--task responses); under torchrun spell it --num-candidates, "
                        "since torchrun's own parser rejects --n as an ambiguous abbreviation")
    g.add_argument("--temperature", type=float, help="default 0.7 (responses) / 0.6 (prompts)")
    g.add_argument("--top-p", type=float, help="default 0.9")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--max-new-tokens", type=int, help="default 512 (responses) / 128 (prompts)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    g.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default bfloat16 on GPU, float32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    s = p.add_argument_group("self-instruction (--task prompts)")
    s.add_argument("--seed-pool", help="IFT seed data, JSONL rows with a 'prompt'")
    s.add_argument("--generated-pool", help="prompts generated in earlier iterations (optional)")
    s.add_argument("--num-prompts", type=int, default=100, help="new prompts to write")
    s.add_argument("--n-shot", type=int, default=8, help="examples per few-shot prompt")
    s.add_argument("--n-generated-shots", type=int, default=2, help="of which from earlier generated prompts")
    s.add_argument("--min-words", type=int, default=3)
    s.add_argument("--max-words", type=int, default=150)
    s.add_argument("--similarity-threshold", type=float, default=0.7, help="ROUGE-L at which a prompt is a duplicate")
    s.add_argument("--max-rounds", type=int, help="give up after this many batches (default: 20 x num-prompts tries)")
    s.add_argument("--chat-format", action="store_true",
                   help="wrap the few-shot text in [INST] ... [/INST] instead of a plain continuation")
    args = p.parse_args(argv)
    for key, value in TASK_DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.task == "responses" and not args.input:
        p.error("--task responses needs --input prompts.jsonl")
    if args.task == "prompts" and not args.seed_pool:
        p.error("--task prompts needs --seed-pool")
    if args.n < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        p.error("--n, --batch-size and --max-new-tokens must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> Optional[dict]:
    a = parse_args(argv)
    check_sampling(a.temperature, a.top_p, a.top_k)  # bad input fails here, before a model is loaded or a file written
    if Path(a.output).is_dir():
        raise DataError(f"{a.output}: --output must be a file (JSONL), this is a folder")
    if a.task == "responses":
        read_prompt_rows(a.input)
    else:
        read_prompt_pool(a.seed_pool)
        if a.generated_pool:
            read_prompt_pool(a.generated_pool)
    owns_group = not torch.distributed.is_initialized()  # a caller may have started it
    rank, world_size, device = dist.init_distributed(a.device)
    try:
        model, tok = load_for_inference(a.model, a.tokenizer, device, DTYPES[a.dtype] if a.dtype else None, a.chat)
        sampling = dict(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, max_new_tokens=a.max_new_tokens,
                        seed=a.seed, batch_size=a.batch_size, compile=a.compile)
        if a.task == "responses":
            summary = write_candidates(model, tok, a.input, a.output, CandidateSettings(n=a.n, **sampling),
                                       overwrite=a.overwrite, rank=rank, world_size=world_size)
        else:
            s = SelfInstructSettings(num_prompts=a.num_prompts, n_shot=a.n_shot, n_generated_shots=a.n_generated_shots,
                                     min_words=a.min_words, max_words=a.max_words,
                                     similarity_threshold=a.similarity_threshold, max_rounds=a.max_rounds,
                                     chat_format=a.chat_format, **sampling)
            summary = write_prompts(model, tok, a.seed_pool, a.output, s, generated_pool=a.generated_pool,
                                    model_name=str(a.model), overwrite=a.overwrite, rank=rank, world_size=world_size)
        if summary is not None:
            print(json.dumps(summary))
        return summary
    finally:
        if owns_group:
            dist.cleanup()


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "generate.py")  # bad input: one line naming file, line and key; exit 2 (--debug: traceback)
