"""Candidate responses: N sampled answers per prompt (the paper: N = 4, T = 0.7, top-p 0.9).

    prompts.jsonl     {"id": str, "prompt": str, ...}
    candidates.jsonl  {"id": str, "prompt": str, "candidates": [str, ...]}

    from srlm.candidates import CandidateSettings, write_candidates
    write_candidates(model, tokenizer, "iter1/prompts.jsonl", "iter1/candidates.jsonl", CandidateSettings(n=4))

Each prompt goes in the Llama-2 chat format; a prompt too long for the context (prompt tokens +
max_new_tokens > max_seq_len) is skipped and counted, never truncated.

Resuming: every finished batch is appended to `<output>.partial` (`<output>.partial.rank{r}`
under torchrun). A rerun after a kill reads these logs, skips what they hold, and at the end
writes `<output>` atomically, in input order, and removes the logs. When `<output>` already
exists its rows count as done too (`overwrite=True` redoes everything). A row is reused only when
its "input_hash" (prompt text, sampling settings, model weights) matches what it would be now;
a prompt edited since, or another model, is sampled again. An output is never replaced by one
with fewer rows unless `overwrite=True`.

The command line is generate.py (`--task responses`); tests: tests/test_candidates.py (the command
line: tests/test_generate.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Optional

from tqdm import tqdm

from srlm import dist
from srlm.io import (DataError, all_partial_logs, append_jsonl, check_replace, input_hash, partial_log, read_jsonl,
                     read_jsonl_partial, write_jsonl)
from srlm.sampling import generate
from srlm.tokenizer import Tokenizer


@dataclass
class CandidateSettings:
    n: int = 4                    # candidates per prompt
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0                # 0 = off
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 32          # sequences per forward pass
    compile: bool = False         # torch.compile the decode step

    def sampling(self) -> dict:
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, compile=self.compile)


def read_prompt_rows(path) -> list[dict]:
    """prompts.jsonl rows, checked: a string 'prompt' and a unique 'id' (string or integer) on every row."""
    rows = read_jsonl(path, required=("id", "prompt"), types={"id": "id", "prompt": "str"}, unique="id")
    if not rows:
        raise DataError(f"{path}: no prompts in this file")
    return rows


def row_hash(prompt: str, settings: "CandidateSettings", model_id: str) -> str:
    """What a candidates row depends on: its prompt, the settings that shape sampling, the model."""
    keys = ("n", "temperature", "top_p", "top_k", "max_new_tokens", "seed")
    return input_hash({"prompt": prompt, "model": model_id, **{k: getattr(settings, k) for k in keys}})


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
    its unfinished prompts are returned. `on_done(rows)` is called after every batch
    (write_candidates appends them to the resumable log).
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
                 "candidates": [tok.decode(ids).strip() for ids in new_ids[j * n : (j + 1) * n]],
                 **({"input_hash": r["input_hash"]} if "input_hash" in r else {})}
                for j, (_, r) in enumerate(chunk) if r["id"] not in done_ids]
        if on_done is not None:
            on_done(done)
        out.extend(done)
        bar.update(len(chunk))
    bar.close()
    return out, skipped


def write_candidates(model, tok: Tokenizer, input, output, settings: CandidateSettings, *, overwrite: bool = False,
                     rank: int = 0, world_size: int = 1) -> Optional[dict]:
    """prompts.jsonl -> candidates.jsonl, resumable (module docstring). Every rank calls this;
    rank 0 writes the file and returns a summary, the others return None."""
    from srlm.loading import model_id as weights_and_chat

    output = Path(output)
    model_id = weights_and_chat(model, tok)
    rows = [{**r, "input_hash": row_hash(r["prompt"], settings, model_id)} for r in read_prompt_rows(input)]
    want = {r["id"]: r["input_hash"] for r in rows}
    finished: dict[str, dict] = {}  # id -> row, known to rank 0 only
    stale = 0
    if rank == 0:
        check_replace(output, len(rows), overwrite, what="prompts' candidates")  # before any work
        if overwrite:
            for old in all_partial_logs(output):
                old.unlink()
        else:
            if output.is_file():
                finished.update((r["id"], r) for r in read_jsonl(output, required=("id", "candidates")))
            for log in all_partial_logs(output):
                finished.update((r["id"], r) for r in read_jsonl_partial(log) if isinstance(r, dict) and "id" in r)
            reusable = {k: v for k, v in finished.items() if k in want and v.get("input_hash") == want[k]}
            stale = sum(k in want for k in finished) - len(reusable)  # same id, other prompt/settings/model
            finished = reusable
    # Every rank must shard the same to-do list: rank 0's view of the logs, sent to all (this also
    # keeps the other ranks from writing to a log before rank 0 has read it).
    done_ids = dist.broadcast_object(set(finished))
    log = partial_log(output, rank, world_size)
    new_rows, skipped = generate_candidates(
        model, tok, rows, settings.n, settings.max_new_tokens, seed=settings.seed, batch_size=settings.batch_size,
        done_ids=done_ids, rank=rank, world_size=world_size,
        on_done=lambda done: append_jsonl(log, done), progress=rank == 0, **settings.sampling())

    gathered = dist.gather_objects((new_rows, skipped))
    if rank != 0:
        return None
    for part_rows, _ in gathered:
        for row in part_rows:
            finished[row["id"]] = row
    all_skipped = gathered[0][1]  # every rank sees the same too-long prompts
    out_rows = [finished[r["id"]] for r in rows if r["id"] in finished]  # input order
    check_replace(output, len(out_rows), overwrite, what="prompts' candidates")  # too-long prompts dropped
    write_jsonl(output, out_rows)
    for old in all_partial_logs(output):
        old.unlink()
    return {"task": "responses", "output": str(output), "prompts": len(rows), "written": len(out_rows),
            "generated_now": sum(len(p) for p, _ in gathered), "resumed": len(done_ids), "redone_stale": stale,
            "skipped_too_long": len(all_skipped), "skipped_ids": all_skipped[:20]}
