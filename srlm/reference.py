"""DPO's reference log-probabilities: log pi_ref(y | x) of every chosen and rejected answer.

DPO compares the policy with a frozen reference model (the starting model M_t). Instead of
keeping a second model in memory, srlm runs the starting model once over every pair before
training and stores the two sums per pair in DIR.train/ref_logps.jsonl:

    {"meta": {"start_model", "data", "dtype"}}                      first line: what they belong to
    {"index": i, "ref_chosen_logps": float, "ref_rejected_logps": float}   one line per pair

The file is a resumable log (srlm.io.append_jsonl / read_jsonl_partial: a kill loses at most the
batch being written) and is recomputed when its first line does not match the data and model.
One "meta" line instead of an input_hash on every row (as the loop's other logs have): every
pair's reference depends on the same two things, the starting model and the whole tokenized data
set (pairs are numbered by their place in it), so the file is valid or stale as a whole.
The loss itself is srlm/dpo.py.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from srlm import dist as sdist
from srlm.data import collate_pairs
from srlm.fsdp import reshard
from srlm.io import append_jsonl, read_jsonl_partial, write_jsonl
from srlm.logprobs import LogprobModel
from srlm.train_config import TrainingError, log


def pair_logps(wrapped: LogprobModel, pairs: list[dict], pad_id: int, device: torch.device, autocast):
    """One forward pass for chosen and rejected together -> (chosen_logps, rejected_logps), (B,) each."""
    tokens, loss_mask = collate_pairs(pairs, pad_id)  # (2B, T): chosen rows first
    with autocast():
        logps = wrapped(tokens.to(device), loss_mask.to(device))  # (2B,) summed over the response tokens
    return logps[: len(pairs)], logps[len(pairs):]


@torch.no_grad()
def reference_logps(wrapped: LogprobModel, examples: list[dict], path: Path, meta: dict, micro_batch_size: int,
                    pad_id: int, device: torch.device, autocast, allow_compute: bool = True) -> None:
    """Attach ref_chosen_logps / ref_rejected_logps to every example, computing what `path` lacks.

    `path` is a resumable log: a first line {"meta": ...} describing the data and the starting
    model, then {"index", "ref_chosen_logps", "ref_rejected_logps"} lines. A file whose meta does
    not match is recomputed. All ranks run the same number of forward passes (FSDP needs it).
    """
    rows = read_jsonl_partial(path)
    if not rows or rows[0].get("meta") != meta:
        rows = []
    done = {r["index"]: r for r in rows[1:]}
    todo = [e for e in examples if e["index"] not in done]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if todo and not allow_compute:
        raise TrainingError(f"{path}: reference log-probs missing for {len(todo)} pairs (or made for other data), "
                            f"but the run resumes from a trained state; delete {path.parent} to start this stage again")
    if todo:
        log(f"reference log-probs for {len(todo)} pairs (starting model, eval mode) -> {path}")
        sdist.barrier()  # every rank has read the file before rank 0 rewrites it
        if sdist.is_main() and not rows:
            write_jsonl(path, [{"meta": meta}])
        was_training = wrapped.training
        wrapped.eval()
        chunk = micro_batch_size * world
        bar = tqdm(total=len(todo), desc="ref logps", disable=not sdist.is_main(), leave=False)
        for start in range(0, len(todo), chunk):
            mine = todo[start: start + chunk][rank::world]
            batch = mine or todo[:1]  # a rank with nothing left still joins the collectives
            chosen, rejected = pair_logps(wrapped, batch, pad_id, device, autocast)
            out = [{"index": e["index"], "ref_chosen_logps": c, "ref_rejected_logps": r}
                   for e, c, r in zip(mine, chosen.tolist(), rejected.tolist())]
            gathered = sdist.gather_objects(out)
            if sdist.is_main():
                new = [r for part in gathered for r in part]
                append_jsonl(path, new)
                for r in new:
                    done[r["index"]] = r
            bar.update(min(chunk, len(todo) - start))
        bar.close()
        wrapped.train(was_training)
        reshard(wrapped)
        sdist.barrier()
        done = {r["index"]: r for r in read_jsonl_partial(path)[1:]}
    for e in examples:
        if e["index"] not in done:
            raise TrainingError(f"{path}: no reference log-probs for pair {e['index']}; delete the file to recompute")
        e["ref_chosen_logps"] = done[e["index"]]["ref_chosen_logps"]
        e["ref_rejected_logps"] = done[e["index"]]["ref_rejected_logps"]
