"""The model judges its own candidates: candidates.jsonl -> judgements.jsonl -> pairs.jsonl.

Each candidate answer is put in the judge prompt (srlm/judge.py, the paper's additive 5-point
rubric) and judged K times by sampling; the parsed scores are averaged (candidates with fewer
than --min-valid parsed judgements are dropped); per prompt, the best-scored candidate becomes
"chosen" and the worst "rejected" (ties give no pair). Outputs:

    judgements.jsonl  one line per (prompt id, candidate index):
                      {"id", "candidate_index", "judgements": [raw text x K],
                       "scores": [float | None x K], "mean_score"}
    pairs.jsonl       {"id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"}
    judge_summary.json  parse-failure rate, pairs built, score histogram

Defaults: K = 3 judgements as in the paper, sampled at temperature 0.7 and top-p 0.9 (the
paper's sampling settings for answers; averaging K samples only reduces noise when the samples
differ, so greedy decoding would make K > 1 pointless), --min-valid 1 (the paper drops only the
judgements that do not parse).

Resumable: work is cut into chunks of --chunk-size candidates; each finished chunk is appended to
`<judgements>.rank<r>.partial`; a rerun skips what is there (and a finished judgements.jsonl) and
only rebuilds the pairs. Chunk c is sampled with seed + c, so a chunk redone after a kill gives
the same texts. Under torchrun, chunks are shared round-robin over the ranks; rank 0 merges.

    python judge.py --model runs/default/m1 --input iter1/candidates.jsonl \\
        [--judgements iter1/judgements.jsonl --pairs iter1/pairs.jsonl] [--k 3] [--template compact]
    torchrun --nproc_per_node 8 judge.py --model ... --input ...

Reward-model evaluation (the paper's table): judge every reply of human-ranked groups
({"prompt", "replies", "ranks"}, e.g. from `python -m srlm.oasst`) and compare with the ranks:

    python judge.py --eval --model runs/default/m1 --input out/oasst/eval_groups.jsonl

Tests: `python -m pytest -q tests/test_judge_cli.py`.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable

from srlm import dist
from srlm.io import (DataError, append_jsonl, read_jsonl, read_jsonl_partial, write_json,
                     write_jsonl)
from srlm.judge import (aggregate_scores, judge_prompt, load_template, pairs_from_judgements,
                        parse_score)
from srlm.metrics import format_metrics, reward_model_metrics


# ----------------------------------------------------------------------------- inputs

def load_candidates(path: str | Path) -> list[dict]:
    """candidates.jsonl rows {"id", "prompt", "candidates": [str, ...]}, checked."""
    rows = read_jsonl(path, required=("id", "prompt", "candidates"))
    seen = set()
    for n, row in enumerate(rows, start=1):
        where = f"{path}: record {n} (id {row['id']!r})"
        if not isinstance(row["prompt"], str):
            raise DataError(f"{where}: 'prompt' must be a string")
        if not isinstance(row["candidates"], list) or not all(isinstance(c, str) for c in row["candidates"]):
            raise DataError(f"{where}: 'candidates' must be a list of strings")
        if str(row["id"]) in seen:
            raise DataError(f"{where}: duplicate id")
        seen.add(str(row["id"]))
    return rows


def load_groups(path: str | Path) -> list[dict]:
    """Ranked groups {"prompt", "replies", "ranks"} (+ optional "id") as candidates-like rows."""
    groups = read_jsonl(path, required=("prompt", "replies", "ranks"))
    rows = []
    for n, g in enumerate(groups, start=1):
        where = f"{path}: record {n}"
        if not isinstance(g["replies"], list) or not all(isinstance(r, str) for r in g["replies"]):
            raise DataError(f"{where}: 'replies' must be a list of strings")
        if not isinstance(g["ranks"], list) or len(g["ranks"]) != len(g["replies"]) or \
                not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in g["ranks"]):
            raise DataError(f"{where}: 'ranks' must be numbers, one per reply")
        rows.append({"id": str(g.get("id", n)), "prompt": g["prompt"], "candidates": g["replies"],
                     "ranks": g["ranks"]})
    if len({r["id"] for r in rows}) != len(rows):
        raise DataError(f"{path}: duplicate group ids")
    return rows


# ----------------------------------------------------------------------------- judging

def work_units(rows: list[dict]) -> list[tuple[str, int, str, str]]:
    """(id, candidate index, prompt, candidate) for every candidate, in file order."""
    return [(str(r["id"]), i, r["prompt"], c) for r in rows for i, c in enumerate(r["candidates"])]


def partial_logs(judgements: Path) -> list[Path]:
    return sorted(judgements.parent.glob(f"{judgements.name}.rank*.partial"))


def judge_candidates(rows: list[dict], judge_fn: Callable, judgements: str | Path, *, k: int = 3,
                     min_valid: int = 1, template: str | None = None, pattern: str | None = None,
                     chunk_size: int = 64, seed: int = 0, rank: int = 0, world_size: int = 1,
                     progress: bool = True) -> list[dict] | None:
    """Judge every candidate k times; write judgements.jsonl. Returns its rows on rank 0.

    `judge_fn(judge_prompts, seed=...) -> texts` (srlm.judge.make_model_judge, or a fake in
    tests). Resumable: see the module docstring. All ranks must call this (it has barriers).
    """
    if k < 1:
        raise ValueError(f"k (judgements per candidate) must be >= 1, got {k}")
    judgements = Path(judgements)
    units = work_units(rows)
    done = {(str(r["id"]), int(r["candidate_index"])) for log in partial_logs(judgements)
            for r in read_jsonl_partial(log)}
    if judgements.is_file():
        done |= {(str(r["id"]), int(r["candidate_index"])) for r in read_jsonl(judgements)}
    chunks = [units[i:i + chunk_size] for i in range(0, len(units), chunk_size)]
    mine = [(c, chunk) for c, chunk in enumerate(chunks)
            if c % world_size == rank and any((u[0], u[1]) not in done for u in chunk)]
    log = judgements.parent / f"{judgements.name}.rank{rank}.partial"
    if progress and rank == 0 and mine:
        from tqdm import tqdm
        mine = tqdm(mine, desc=f"judging x{k}", unit="chunk")
    for c, chunk in mine:
        prompts = [judge_prompt(prompt, cand, template) for _, _, prompt, cand in chunk for _ in range(k)]
        texts = judge_fn(prompts, seed=seed + c)                # (len(chunk) * k,) judgement texts
        out = []
        for j, (rid, idx, _, _) in enumerate(chunk):
            raw = texts[j * k:(j + 1) * k]
            scores = [parse_score(t, pattern) for t in raw]
            out.append({"id": rid, "candidate_index": idx, "judgements": raw, "scores": scores,
                        "mean_score": aggregate_scores(scores, min_valid)})
        append_jsonl(log, out)
    dist.barrier()
    result = None
    if rank == 0:
        by_key = {}
        for r in (read_jsonl(judgements) if judgements.is_file() else []):
            by_key.setdefault((str(r["id"]), int(r["candidate_index"])), r)
        for path in partial_logs(judgements):
            for r in read_jsonl_partial(path):
                by_key.setdefault((str(r["id"]), int(r["candidate_index"])), r)
        missing = [u[:2] for u in units if u[:2] not in by_key]
        if missing:
            raise RuntimeError(f"{len(missing)} candidates were not judged, e.g. {missing[:3]}")
        result = [by_key[u[:2]] for u in units]
        for r in result:   # --min-valid may differ from the run that wrote a row
            r["mean_score"] = aggregate_scores(r["scores"], min_valid)
        write_jsonl(judgements, result)
        for path in partial_logs(judgements):
            path.unlink()
    dist.barrier()
    return result


# ----------------------------------------------------------------------------- CLI

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF-format checkpoint dir (with tokenizer.model or tokenizer.json)")
    ap.add_argument("--input", "--candidates", dest="input", required=True,
                    help="candidates.jsonl (or ranked groups with --eval)")
    ap.add_argument("--judgements", help="default: judgements.jsonl (eval_judgements.jsonl) next to --input")
    ap.add_argument("--pairs", help="default: pairs.jsonl next to --input")
    ap.add_argument("--summary", help="default: judge_summary.json next to --pairs")
    ap.add_argument("--eval", action="store_true", help="reward-model metrics on ranked groups")
    ap.add_argument("--metrics", help="--eval output, default: eval_metrics.json next to --input")
    ap.add_argument("--k", "--num-judgements", dest="k", type=int, default=3,
                    help="judgements per candidate (paper: 3)")
    ap.add_argument("--min-valid", type=int, default=1, help="parsed judgements a candidate needs")
    ap.add_argument("--template", default="default", help="'default', 'compact' or a template file")
    ap.add_argument("--score-pattern", default=None, help="regex with a (?P<score>...) group")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per forward pass")
    ap.add_argument("--chunk-size", type=int, default=64, help="candidates per resumable chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on GPU, float32 on CPU (as generate.py)")
    return ap.parse_args(argv)


def load_judge(args, device) -> Callable:
    import torch

    from srlm.judge import make_model_judge
    from srlm.model import Llama
    from srlm.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(args.model)
    dtype = args.dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
    model = Llama.from_pretrained(args.model, dtype=getattr(torch, dtype), device=device)
    model.eval()
    return make_model_judge(model, tokenizer, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                            batch_size=args.batch_size)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    inp = Path(args.input)
    template = load_template(args.template)               # bad inputs fail before the model loads
    if args.score_pattern:
        parse_score("", args.score_pattern)
    if args.min_valid < 1 or args.min_valid > args.k:
        raise ValueError(f"--min-valid must be in [1, --k={args.k}], got {args.min_valid}")
    rows = load_groups(inp) if args.eval else load_candidates(inp)
    judgements = Path(args.judgements or inp.parent / ("eval_judgements.jsonl" if args.eval
                                                       else "judgements.jsonl"))
    rank, world_size, device = dist.init_distributed(args.device)
    judge_fn = load_judge(args, device)
    judged = judge_candidates(rows, judge_fn, judgements, k=args.k, min_valid=args.min_valid,
                              template=template, pattern=args.score_pattern,
                              chunk_size=args.chunk_size, seed=args.seed, rank=rank,
                              world_size=world_size)
    if rank != 0:
        return None
    if args.eval:
        mean = {(r["id"], r["candidate_index"]): r["mean_score"] for r in judged}
        groups = [{"ranks": g["ranks"], "scores": [mean[(g["id"], i)] for i in range(len(g["candidates"]))]}
                  for g in rows]
        metrics = reward_model_metrics(groups)
        _, summary = pairs_from_judgements(rows, judged, args.min_valid)
        metrics["parse_failure_rate"] = summary["parse_failure_rate"]
        metrics = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
        write_json(Path(args.metrics or inp.parent / "eval_metrics.json"), metrics)
        print(format_metrics(metrics, title=Path(args.model).name))
        return metrics
    pairs_path = Path(args.pairs or inp.parent / "pairs.jsonl")
    pairs, summary = pairs_from_judgements(rows, judged, args.min_valid)
    write_jsonl(pairs_path, pairs)
    write_json(Path(args.summary or pairs_path.parent / "judge_summary.json"), summary)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
    dist.cleanup()
