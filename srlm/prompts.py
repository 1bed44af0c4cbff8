"""New prompts by few-shot self-instruction: the model writes prompts.jsonl (step 1 of an iteration).

Paper: 8-shot prompts, 6 examples from the IFT seed and 2 from prompts generated earlier, sampled
at temperature 0.6, top-p 0.9; near-duplicates (ROUGE-L) and prompts of bad length are dropped.
The text pieces (few-shot prompt, parser, duplicate filter) are srlm/self_instruct.py; this file
runs the model over rounds of them.

    from srlm.prompts import SelfInstructSettings, write_prompts
    write_prompts(model, tokenizer, "data/seed_prompts.jsonl", "iter1/prompts.jsonl",
                  SelfInstructSettings(num_prompts=100), model_name="runs/default/m1")

    prompts.jsonl  {"id": str, "prompt": str, "source": "self-instruct", "model": str}

A round is one batch of few-shot prompts; its examples and sampling seed depend only on (seed,
round), so a round redone after a kill gives the same prompts. Every finished round is appended to
`<output>.partial` (`.partial.rank{r}` under torchrun, where rank r takes rounds r, r + W, ...);
a rerun skips the logged rounds, and the end writes `<output>` atomically and removes the logs.
A logged round is reused only when its "input_hash" (seed pool, earlier prompts, settings, model
weights) matches; rounds logged under other inputs are done again. The summary (`summary`, e.g.
prompts_summary.json) is written before `<output>`, so a kill never leaves one without the other.

The command line is generate.py (`--task prompts`); tests: tests/test_prompts.py, the text pieces
tests/test_self_instruct.py, the command line tests/test_generate.py.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from srlm import dist
from srlm.io import (DataError, all_partial_logs, append_jsonl, input_hash, partial_log, read_jsonl,
                     read_jsonl_partial, write_json, write_jsonl)
from srlm.sampling import generate
from srlm.self_instruct import (STOP_STRINGS, DuplicateFilter, build_few_shot_prompt, choose_examples,
                                parse_instruction, rejection_reason)
from srlm.tokenizer import Tokenizer


@dataclass
class SelfInstructSettings:
    num_prompts: int = 100            # new prompts to write
    n_shot: int = 8                   # examples per few-shot prompt
    n_generated_shots: int = 2        # of which from earlier generated prompts
    min_words: int = 3
    max_words: int = 150
    similarity_threshold: float = 0.7  # ROUGE-L at which a prompt is a near-duplicate
    max_rounds: Optional[int] = None  # give up after this many rounds (None: 20 x num_prompts tries)
    chat_format: bool = False         # wrap the few-shot text in [INST] ... [/INST]
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 32              # few-shot prompts per round (one forward batch)
    compile: bool = False

    def sampling(self) -> dict:
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, compile=self.compile)


def self_instruct_round(model, tok: Tokenizer, round_id: int, seed_prompts: list[str], generated_prompts: list[str],
                        dup_filter: DuplicateFilter, s: SelfInstructSettings, model_name: str = "") -> dict:
    """One batch of few-shot prompts -> parsed, filtered new prompts. Updates dup_filter with them.

    Returns a log record {"round", "accepted": [rows], "rejected": {reason: count}, "attempts"}.
    The examples and the sampling seed depend only on (seed, round), so a resumed run repeats it.
    """
    rng = random.Random(f"{s.seed}:{round_id}")
    texts = [build_few_shot_prompt(choose_examples(seed_prompts, generated_prompts, rng, s.n_shot,
                                                   s.n_generated_shots))
             for _ in range(s.batch_size)]
    encoded = [tok.encode_prompt(t) if s.chat_format else tok.encode(t, bos=True) for t in texts]
    rejected: dict[str, int] = {}
    fits = [len(ids) + s.max_new_tokens <= model.args.max_seq_len for ids in encoded]
    if not any(fits):
        raise ValueError(f"round {round_id}: none of the {len(texts)} few-shot prompts fits the context of "
                         f"{model.args.max_seq_len} tokens with --max-new-tokens {s.max_new_tokens}; "
                         f"lower --n-shot or --max-new-tokens")
    if not all(fits):
        rejected["few_shot_too_long"] = fits.count(False)
    batch = [ids for ids, ok in zip(encoded, fits) if ok]
    outs = generate(model, batch, s.max_new_tokens, eos_id=tok.eos_id, seed=s.seed * 1_000_003 + round_id,
                    stop_strings=STOP_STRINGS, tokenizer=tok, batch_size=s.batch_size,
                    **s.sampling()) if batch else []
    accepted = []
    for ids in outs:
        text = parse_instruction(tok.decode(ids))
        reason = rejection_reason(text, dup_filter, s.min_words, s.max_words)
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        dup_filter.add(text)  # later candidates of this round are checked against it too
        accepted.append({"id": f"selfinstruct-s{s.seed}-r{round_id}-{len(accepted)}", "prompt": text,
                         "source": "self-instruct", "model": model_name})
    return {"round": round_id, "accepted": accepted, "rejected": rejected, "attempts": len(texts)}


def read_prompt_pool(path) -> list[str]:
    """The "prompt" strings of a JSONL pool (seed data, or prompts of earlier iterations), checked."""
    rows = read_jsonl(path, required=("prompt",), types={"prompt": "str"})
    if not rows:
        raise DataError(f"{path}: no prompts in this file")
    return [r["prompt"] for r in rows]


def round_key(seed_prompts: list[str], earlier: list[str], model_id: str, s: SelfInstructSettings) -> str:
    """The input_hash of a logged round: what its prompts depend on (pools, settings, model)."""
    return input_hash({"seed_pool": seed_prompts, "earlier": earlier, "model": model_id,
                       "settings": {k: v for k, v in vars(s).items() if k not in ("compile", "num_prompts")}})


def write_prompts(model, tok: Tokenizer, seed_pool, output, s: SelfInstructSettings, *, generated_pool=None,
                  model_name: str = "", overwrite: bool = False, summary=None, rank: int = 0,
                  world_size: int = 1) -> Optional[dict]:
    """Self-instruct `s.num_prompts` new prompts into `output` (resumable, module docstring).

    `seed_pool`: IFT seed data (JSONL rows with a "prompt"); `generated_pool`: prompts written in
    earlier iterations (optional). Every rank calls this; rank 0 writes the file and returns a
    summary (rounds, attempts, rejections by reason), the others return None.
    """
    from srlm.loading import model_id

    output = Path(output)
    seed_prompts = read_prompt_pool(seed_pool)  # checked first, even when there is nothing to do
    earlier = read_prompt_pool(generated_pool) if generated_pool else []
    if dist.broadcast_object(output.is_file() and not overwrite):
        n = len(read_jsonl(output, required=("id", "prompt"))) if rank == 0 else 0
        return {"task": "prompts", "output": str(output), "written": n, "note": "output exists; nothing to do"}
    key = round_key(seed_prompts, earlier, model_id(model, tok), s)
    rounds, stale = {}, 0  # round id -> log record
    if rank == 0:
        for log in all_partial_logs(output):
            if overwrite:
                log.unlink()
                continue
            for rec in read_jsonl_partial(log):
                if isinstance(rec, dict) and rec.get("input_hash") == key and isinstance(rec.get("round"), int):
                    rounds[rec["round"]] = rec
                else:
                    stale += 1
    rounds = dist.broadcast_object(rounds)  # every rank resumes from rank 0's view of the logs
    resumed = [row for r in sorted(rounds) for row in rounds[r]["accepted"]]

    dup_filter = DuplicateFilter(seed_prompts + earlier, threshold=s.similarity_threshold)
    for row in resumed:
        dup_filter.add(row["prompt"])
    pool = earlier + [row["prompt"] for row in resumed]
    quota = math.ceil(max(0, s.num_prompts - len(resumed)) / world_size)
    max_rounds = s.max_rounds or math.ceil(20 * s.num_prompts / s.batch_size)
    log = partial_log(output, rank, world_size)

    mine, n_new = [], 0
    bar = tqdm(total=quota, desc="new prompts", unit="prompt", disable=rank != 0)
    for round_id in range(rank, max_rounds, world_size):  # rank r takes rounds r, r + W, r + 2W, ...
        if n_new >= quota:
            break
        if round_id in rounds:
            continue
        rec = self_instruct_round(model, tok, round_id, seed_prompts, pool, dup_filter, s, model_name)
        rec["input_hash"] = key
        append_jsonl(log, [rec])
        mine.append(rec)
        pool.extend(row["prompt"] for row in rec["accepted"])
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
    final_filter = DuplicateFilter(seed_prompts + earlier, threshold=s.similarity_threshold)
    kept, dropped_across_ranks = [], 0
    for r in sorted(rounds):
        for row in rounds[r]["accepted"]:
            if len(kept) < s.num_prompts and final_filter.check(row["prompt"]) is None:
                final_filter.add(row["prompt"])
                kept.append(row)
            elif len(kept) < s.num_prompts:
                dropped_across_ranks += 1
    rejected: dict[str, int] = {}
    for rec in rounds.values():
        for k, v in rec["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
    stats = {"task": "prompts", "output": str(output), "written": len(kept), "requested": s.num_prompts,
             "rounds": len(rounds), "attempts": sum(rec["attempts"] for rec in rounds.values()),
             "rejected": rejected, "duplicates_across_ranks": dropped_across_ranks, "stale_rounds_redone": stale}
    if summary is not None:
        write_json(summary, stats)  # before the output: its presence marks the step done
    write_jsonl(output, kept)
    for old in all_partial_logs(output):
        old.unlink()
    return stats
