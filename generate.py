"""The generation steps of a self-rewarding iteration: candidate responses, or new prompts.

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
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Callable, Collection, Optional

import torch
from tqdm import tqdm

from srlm import dist
from srlm.io import DataError, append_jsonl, read_jsonl, read_jsonl_partial, write_jsonl
from srlm.sampling import generate
from srlm.self_instruct import (STOP_STRINGS, DuplicateFilter, build_few_shot_prompt, choose_examples,
                                parse_instruction, rejection_reason)
from srlm.tokenizer import Tokenizer, load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TASK_DEFAULTS = {  # paper settings per task; flags override them
    "responses": dict(temperature=0.7, top_p=0.9, max_new_tokens=512),
    "prompts": dict(temperature=0.6, top_p=0.9, max_new_tokens=128),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="Hugging Face model directory (config.json + safetensors)")
    p.add_argument("--tokenizer", help="tokenizer.model or tokenizer.json (default: the one inside --model)")
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
    g.add_argument("--dtype", choices=sorted(DTYPES), help="default bfloat16 on GPU, float32 on CPU")
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


# ----------------------------------------------------------------------------- setup and files


def load_model_and_tokenizer(model_dir, tokenizer_path=None, device="cpu", dtype: Optional[torch.dtype] = None):
    """The tokenizer first (a clear error when the directory has none), then the weights."""
    from srlm.model import Llama

    tok = load_tokenizer(tokenizer_path or model_dir)  # tokenizer.model or tokenizer.json, with the chat format
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = Llama.from_pretrained(model_dir, dtype=dtype, device=device).eval()
    if model.args.vocab_size < tok.vocab_size:
        raise ValueError(f"{model_dir}: vocab_size {model.args.vocab_size} is smaller than the tokenizer's "
                         f"{tok.vocab_size} ({tok.path})")
    return model, tok


def partial_log(output: Path, rank: int, world_size: int) -> Path:
    return output.with_name(output.name + (f".partial.rank{rank}" if world_size > 1 else ".partial"))


def all_partial_logs(output: Path) -> list[Path]:
    """Every resumable log of this output, whatever world size wrote it."""
    return sorted(output.parent.glob(output.name + ".partial*")) if output.parent.is_dir() else []


def read_prompt_rows(path) -> list[dict]:
    rows = read_jsonl(path, required=("id", "prompt"))
    seen = {}
    for i, row in enumerate(rows):
        if not isinstance(row["prompt"], str):
            raise DataError(f"{path}: row {i + 1} (id {row['id']!r}): 'prompt' must be a string")
        if row["id"] in seen:
            raise DataError(f"{path}: duplicate id {row['id']!r} (rows {seen[row['id']] + 1} and {i + 1})")
        seen[row["id"]] = i
    return rows


def same_on_all_ranks(obj):
    """Rank 0's `obj` on every rank (a no-op in a single process)."""
    if not torch.distributed.is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def sampling_kwargs(args) -> dict:
    return dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, compile=args.compile)


# ----------------------------------------------------------------------------- task: responses


def generate_candidates(model, tok: Tokenizer, rows: list[dict], n: int, max_new_tokens: int, *, seed: int = 0,
                        batch_size: int = 32, done_ids: Collection[str] = (), rank: int = 0, world_size: int = 1,
                        on_done: Optional[Callable[[list[dict]], None]] = None,
                        progress: bool = True, **sampling) -> tuple[list[dict], list[str]]:
    """N candidates for each prompt row, in the chat format. Returns (new candidate rows, ids skipped as too long).

    The prompts that fit are cut into fixed batches of batch_size // n prompts (each repeated n
    times, side by side) by their position in `rows`, and batch b is sampled with seed + the input
    position of its first prompt. The batches are the same on every rank and in every rerun, so
    the output depends on neither the number of ranks (rank r takes batches r, r + W, ...) nor on
    a kill and resume: a batch with any prompt not in `done_ids` is sampled again in full, and only
    its unfinished prompts are returned. `on_done(rows)` is called after every batch (generate.py
    appends them to the resumable log).
    """
    max_len = model.args.max_seq_len
    encoded = [tok.encode_prompt(r["prompt"]) for r in rows]
    fits = [len(ids) + max_new_tokens <= max_len for ids in encoded]
    skipped = [r["id"] for r, ok in zip(rows, fits) if not ok]
    todo = [(i, r) for i, (r, ok) in enumerate(zip(rows, fits)) if ok]
    per_batch = max(1, batch_size // n)
    batches = [todo[start : start + per_batch] for start in range(0, len(todo), per_batch)]
    mine = [b for k, b in enumerate(batches) if k % world_size == rank and any(r["id"] not in done_ids for _, r in b)]
    out = []
    bar = tqdm(total=sum(len(b) for b in mine), desc="responses", unit="prompt", disable=not progress)
    for chunk in mine:
        batch = [encoded[i] for i, _ in chunk for _ in range(n)]  # each prompt n times, side by side
        new_ids = generate(model, batch, max_new_tokens, eos_id=tok.eos_id, seed=seed + chunk[0][0],
                           batch_size=batch_size, **sampling)
        done = [{"id": r["id"], "prompt": r["prompt"],
                 "candidates": [tok.decode(ids).strip() for ids in new_ids[j * n : (j + 1) * n]]}
                for j, (_, r) in enumerate(chunk) if r["id"] not in done_ids]
        if on_done is not None:
            on_done(done)
        out.extend(done)
        bar.update(len(chunk))
    bar.close()
    return out, skipped


def run_responses(args, model, tok, rank: int, world_size: int) -> Optional[dict]:
    output = Path(args.output)
    rows = read_prompt_rows(args.input)
    known = {r["id"] for r in rows}
    finished: dict[str, dict] = {}  # id -> row, known to rank 0 only
    if rank == 0:
        if args.overwrite:
            for old in all_partial_logs(output):
                old.unlink()
        else:
            if output.is_file():
                finished.update((r["id"], r) for r in read_jsonl(output, required=("id", "candidates")))
            for log in all_partial_logs(output):
                finished.update((r["id"], r) for r in read_jsonl_partial(log) if "id" in r)
            finished = {k: v for k, v in finished.items() if k in known}
    # Every rank must shard the same to-do list: rank 0's view of the logs, sent to all (this also
    # keeps the other ranks from writing to a log before rank 0 has read it).
    done_ids = same_on_all_ranks(set(finished))
    log = partial_log(output, rank, world_size)
    new_rows, skipped = generate_candidates(
        model, tok, rows, args.n, args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
        done_ids=done_ids, rank=rank, world_size=world_size,
        on_done=lambda done: append_jsonl(log, done), progress=rank == 0, **sampling_kwargs(args))

    gathered = dist.gather_objects((new_rows, skipped))
    if rank != 0:
        return None
    for part_rows, _ in gathered:
        for row in part_rows:
            finished[row["id"]] = row
    all_skipped = gathered[0][1]  # every rank sees the same too-long prompts
    write_jsonl(output, [finished[r["id"]] for r in rows if r["id"] in finished])  # input order
    for old in all_partial_logs(output):
        old.unlink()
    return {"task": "responses", "output": str(output), "prompts": len(rows), "written": len(finished),
            "generated_now": sum(len(p) for p, _ in gathered), "resumed": len(done_ids),
            "skipped_too_long": len(all_skipped), "skipped_ids": all_skipped[:20]}


# ----------------------------------------------------------------------------- task: prompts


def self_instruct_round(model, tok: Tokenizer, round_id: int, seed_prompts: list[str], generated_prompts: list[str],
                        dup_filter: DuplicateFilter, args) -> dict:
    """One batch of few-shot prompts -> parsed, filtered new prompts. Updates dup_filter with them.

    Returns a log record {"round", "accepted": [rows], "rejected": {reason: count}, "attempts"}.
    The examples and the sampling seed depend only on (seed, round), so a resumed run repeats it.
    """
    rng = random.Random(f"{args.seed}:{round_id}")
    texts = [build_few_shot_prompt(choose_examples(seed_prompts, generated_prompts, rng, args.n_shot,
                                                   args.n_generated_shots))
             for _ in range(args.batch_size)]
    encoded = [tok.encode_prompt(t) if args.chat_format else tok.encode(t, bos=True) for t in texts]
    rejected: dict[str, int] = {}
    fits = [len(ids) + args.max_new_tokens <= model.args.max_seq_len for ids in encoded]
    if not any(fits):
        raise ValueError(f"round {round_id}: none of the {len(texts)} few-shot prompts fits the context of "
                         f"{model.args.max_seq_len} tokens with --max-new-tokens {args.max_new_tokens}; "
                         f"lower --n-shot or --max-new-tokens")
    if not all(fits):
        rejected["few_shot_too_long"] = fits.count(False)
    batch = [ids for ids, ok in zip(encoded, fits) if ok]
    outs = generate(model, batch, args.max_new_tokens, eos_id=tok.eos_id, seed=args.seed * 1_000_003 + round_id,
                    stop_strings=STOP_STRINGS, tokenizer=tok, batch_size=args.batch_size,
                    **sampling_kwargs(args)) if batch else []
    accepted = []
    for ids in outs:
        text = parse_instruction(tok.decode(ids))
        reason = rejection_reason(text, dup_filter, args.min_words, args.max_words)
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        dup_filter.add(text)  # later candidates of this round are checked against it too
        accepted.append({"id": f"selfinstruct-s{args.seed}-r{round_id}-{len(accepted)}", "prompt": text,
                         "source": "self-instruct", "model": str(args.model)})
    return {"round": round_id, "accepted": accepted, "rejected": rejected, "attempts": len(texts)}


def run_prompts(args, model, tok, rank: int, world_size: int) -> Optional[dict]:
    output = Path(args.output)
    if same_on_all_ranks(output.is_file() and not args.overwrite):
        n = len(read_jsonl(output, required=("id", "prompt"))) if rank == 0 else 0
        return {"task": "prompts", "output": str(output), "written": n, "note": "output exists; nothing to do"}
    seed_prompts = [r["prompt"] for r in read_jsonl(args.seed_pool, required=("prompt",))]
    earlier = [r["prompt"] for r in read_jsonl(args.generated_pool, required=("prompt",))] if args.generated_pool else []
    rounds = {}  # round id -> log record
    if rank == 0:
        for log in all_partial_logs(output):
            if args.overwrite:
                log.unlink()
            else:
                rounds.update((rec["round"], rec) for rec in read_jsonl_partial(log))
    rounds = same_on_all_ranks(rounds)  # every rank resumes from rank 0's view of the logs
    resumed = [row for r in sorted(rounds) for row in rounds[r]["accepted"]]

    dup_filter = DuplicateFilter(seed_prompts + earlier, threshold=args.similarity_threshold)
    for row in resumed:
        dup_filter.add(row["prompt"])
    generated_pool = earlier + [row["prompt"] for row in resumed]
    quota = math.ceil(max(0, args.num_prompts - len(resumed)) / world_size)
    max_rounds = args.max_rounds or math.ceil(20 * args.num_prompts / args.batch_size)
    log = partial_log(output, rank, world_size)

    mine, n_new = [], 0
    bar = tqdm(total=quota, desc="new prompts", unit="prompt", disable=rank != 0)
    for round_id in range(rank, max_rounds, world_size):  # rank r takes rounds r, r + W, r + 2W, ...
        if n_new >= quota:
            break
        if round_id in rounds:
            continue
        rec = self_instruct_round(model, tok, round_id, seed_prompts, generated_pool, dup_filter, args)
        append_jsonl(log, [rec])
        mine.append(rec)
        generated_pool.extend(row["prompt"] for row in rec["accepted"])
        n_new += len(rec["accepted"])
        bar.update(min(len(rec["accepted"]), quota - bar.n))
    bar.close()

    gathered = dist.gather_objects(mine)
    if rank != 0:
        return None
    for part in gathered:
        for rec in part:
            rounds[rec["round"]] = rec
    # Ranks filtered against their own pools only: filter the merged list again, in round order.
    final_filter = DuplicateFilter(seed_prompts + earlier, threshold=args.similarity_threshold)
    kept, dropped_across_ranks = [], 0
    for r in sorted(rounds):
        for row in rounds[r]["accepted"]:
            if len(kept) < args.num_prompts and final_filter.check(row["prompt"]) is None:
                final_filter.add(row["prompt"])
                kept.append(row)
            elif len(kept) < args.num_prompts:
                dropped_across_ranks += 1
    write_jsonl(output, kept)
    for old in all_partial_logs(output):
        old.unlink()
    rejected: dict[str, int] = {}
    for rec in rounds.values():
        for k, v in rec["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    return {"task": "prompts", "output": str(output), "written": len(kept), "requested": args.num_prompts,
            "rounds": len(rounds), "attempts": sum(rec["attempts"] for rec in rounds.values()),
            "rejected": rejected, "duplicates_across_ranks": dropped_across_ranks}


# ----------------------------------------------------------------------------- entry point


def main(argv: Optional[list[str]] = None) -> Optional[dict]:
    args = parse_args(argv)
    owns_group = not torch.distributed.is_initialized()  # a caller (srlm/loop.py) may have started it
    rank, world_size, device = dist.init_distributed(args.device)
    try:
        model, tok = load_model_and_tokenizer(args.model, args.tokenizer, device,
                                              DTYPES[args.dtype] if args.dtype else None)
        run = run_responses if args.task == "responses" else run_prompts
        summary = run(args, model, tok, rank, world_size)
        if summary is not None:
            print(json.dumps(summary))
        return summary
    finally:
        if owns_group:
            dist.cleanup()


if __name__ == "__main__":
    try:
        main()
    except (DataError, FileNotFoundError, ValueError) as e:  # bad input: one clear line, no traceback
        sys.exit(f"generate.py: error: {e}")
