"""The paper's seed data, built from the official Open Assistant (OASST1) tree export.

Input: the tree JSONL (one conversation tree per line: `message_tree_id`, `tree_state`, and a
nested `prompt` message whose `replies` carry `role`, `lang`, `text`, `rank` (0 = best among
siblings), `synthetic`, `review_result`, `deleted`). Output, in --out-dir:

- ift.jsonl          {"id", "prompt", "response"}: English first-turn prompts with the reply
                     that humans ranked best (rank 0). The SFT row layout.
- eval_groups.jsonl  {"id", "prompt", "replies", "ranks"}: held-out first-turn prompts with their
                     human-ranked sibling replies, for the reward-model metrics
                     (`python judge.py --eval ...`, srlm/metrics.py).
- train_groups.jsonl the same for the training trees (what EFT is built from).
- eft.jsonl          (only with --judge-model) {"id", "prompt", "response", "score"}: the judge
                     prompt for one reply and a judgement ending in "Score: s", by the paper's
                     recipe (see `build_eft`). eft_judgements.jsonl keeps every raw judgement
                     and makes the run resumable.
- stats.json         counts of everything kept and skipped.

Decisions:
- First turn only: the judge prompt holds one question and one answer, so deeper turns (which
  need the conversation before them) are not used.
- Skipped: deleted messages, messages whose review failed (review_result false; null means "not
  reviewed" and is kept), non-English messages, unranked replies -- each with its subtree.
- Synthetic messages (model-written, `synthetic: true`; the sample has 5 such trees) are
  skipped by default, because the paper's seed data is human-written; --include-synthetic keeps
  them.
- Split: a whole tree goes to eval when sha256(message_tree_id) falls below --eval-fraction
  (default 0.25, close to the paper's 541 eval / 1,630 train EFT examples). Deterministic and
  stable when trees are added; eval prompts never appear in ift.jsonl or eft.jsonl.

    python -m srlm.oasst --trees ../shared/data/oasst1_en_100_trees.jsonl --out-dir out/oasst \\
        [--judge-model out/sft_baseline] [--eval-fraction 0.25] [--include-synthetic]

Everything (trees, template, judge model) is checked before a file is written, and an output is
never replaced by one with fewer rows (other trees, a lower --eval-fraction) without --overwrite.

Tests: `python -m pytest -q tests/test_oasst.py`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

from srlm.chat import FORMATS
from srlm.io import DataError, append_jsonl, check_replace, input_hash, read_jsonl_partial, write_json, write_jsonl
from srlm.judge import judge_prompt, load_template, parse_score, truncate_after_score

ROLES = ("prompter", "assistant")


# ----------------------------------------------------------------------------- reading trees

def _check_message(msg, where: str, parent_role: str | None) -> None:
    """Raise DataError naming `where` (file:line) and the message id for a malformed message."""
    if not isinstance(msg, dict):
        raise DataError(f"{where}: a message is a {type(msg).__name__}, expected an object")
    mid = msg.get("message_id")
    if not isinstance(mid, str) or not mid:
        raise DataError(f"{where}: a message has no 'message_id' (child of a {parent_role} message)")
    at = f"{where}: message {mid}"
    if msg.get("role") not in ROLES:
        raise DataError(f"{at}: 'role' is {msg.get('role')!r}, expected one of {ROLES}")
    if parent_role is None and msg["role"] != "prompter":
        raise DataError(f"{at}: the root message of a tree must have role 'prompter'")
    if parent_role is not None and msg["role"] == parent_role:
        raise DataError(f"{at}: has the same role ({parent_role!r}) as the message it replies to")
    if not isinstance(msg.get("text"), str):
        raise DataError(f"{at}: 'text' is missing or not a string")
    rank = msg.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise DataError(f"{at}: 'rank' is {rank!r}, expected a non-negative integer or null")
    if not isinstance(msg.get("replies", []), list):
        raise DataError(f"{at}: 'replies' is not a list")


def iter_trees(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, tree) from an OASST tree JSONL, checking every message in every tree."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                tree = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg})") from None
            if not isinstance(tree, dict) or not isinstance(tree.get("prompt"), dict):
                raise DataError(f"{where}: expected a tree object with a 'prompt' message")
            if not isinstance(tree.get("message_tree_id"), str):
                raise DataError(f"{where}: tree has no 'message_tree_id'")
            stack = [(tree["prompt"], None)]          # iterative walk: deep trees are fine
            while stack:
                msg, parent_role = stack.pop()
                _check_message(msg, where, parent_role)
                stack.extend((r, msg["role"]) for r in msg.get("replies", []))
            yield lineno, tree


def _skip_reason(msg: dict, include_synthetic: bool) -> str | None:
    if msg.get("deleted"):
        return "deleted"
    if msg.get("review_result") is False:
        return "failed_review"
    if msg.get("lang") != "en":
        return "not_english"
    if msg.get("synthetic") and not include_synthetic:
        return "synthetic"
    return None


def first_turn_groups(path: str | Path, include_synthetic: bool = False) -> tuple[list[dict], dict]:
    """First-turn prompts with their kept, ranked replies (best first) -> (groups, stats).

    group: {"id": prompt message id, "tree_id", "prompt", "replies": [text], "ranks": [int],
            "reply_ids": [message id]}; only groups with at least one kept ranked reply.
    """
    stats: Counter = Counter()
    groups = []
    for _, tree in iter_trees(path):
        stats["trees"] += 1
        root = tree["prompt"]
        reason = _skip_reason(root, include_synthetic)
        if reason:
            stats[f"prompts_skipped_{reason}"] += 1
            continue
        kept = []
        for i, reply in enumerate(root.get("replies", [])):
            reason = _skip_reason(reply, include_synthetic)
            if reason is None and reply.get("rank") is None:
                reason = "unranked"
            if reason:
                stats[f"replies_skipped_{reason}"] += 1
                continue
            kept.append((reply["rank"], i, reply))
        if not kept:
            stats["prompts_without_ranked_reply"] += 1
            continue
        kept.sort(key=lambda t: (t[0], t[1]))        # best first; ties keep file order
        groups.append({"id": root["message_id"], "tree_id": tree["message_tree_id"],
                       "prompt": root["text"], "replies": [r["text"] for _, _, r in kept],
                       "ranks": [rank for rank, _, _ in kept],
                       "reply_ids": [r["message_id"] for _, _, r in kept]})
    stats["groups"] = len(groups)
    return groups, dict(stats)


def is_eval_tree(tree_id: str, eval_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of sha256(tree id) as a number in [0, 1)."""
    h = int.from_bytes(hashlib.sha256(tree_id.encode("utf-8")).digest()[:8], "big")
    return h / 2.0 ** 64 < eval_fraction


def ift_rows(groups: Sequence[dict]) -> list[dict]:
    """IFT: each prompt with its rank-0 reply (skipped when rank 0 was removed or is shared)."""
    rows = []
    for g in groups:
        best = [i for i, r in enumerate(g["ranks"]) if r == 0]
        if len(best) == 1:
            rows.append({"id": g["reply_ids"][best[0]], "prompt": g["prompt"],
                         "response": g["replies"][best[0]]})
    return rows


def ranked_group_rows(groups: Sequence[dict]) -> list[dict]:
    """Groups usable for ranking: at least two replies with different human ranks."""
    return [{"id": g["id"], "prompt": g["prompt"], "replies": g["replies"], "ranks": g["ranks"]}
            for g in groups if len(set(g["ranks"])) >= 2]


# ----------------------------------------------------------------------------- EFT

def scores_agree(scores: Sequence[float], ranks: Sequence[int], strict: bool = False) -> bool:
    """Do judge scores (higher = better) order the replies as the human ranks (lower = better)?

    No pair may be ordered against the humans. strict=False (default): equal scores are
    allowed, but not all scores equal (that set says nothing about the order); strict=True:
    every pair that humans ranked differently must get different scores, in the right order.
    """
    if len(set(scores)) < 2:
        return False
    for i in range(len(ranks)):
        for j in range(len(ranks)):
            if ranks[i] < ranks[j]:
                if scores[i] < scores[j] or (strict and scores[i] == scores[j]):
                    return False
    return True


def rebalance_by_score(examples: Sequence[dict], max_ratio: float = 1.0, seed: int = 0) -> list[dict]:
    """Downsample the most common whole-point score to at most ceil(max_ratio x the second most
    common one); other scores are untouched; order is kept. With one score value, nothing to do."""
    buckets: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        buckets.setdefault(int(math.floor(ex["score"] + 0.5)), []).append(i)
    if len(buckets) < 2:
        return list(examples)
    sizes = sorted((len(v) for v in buckets.values()), reverse=True)
    cap = math.ceil(max_ratio * sizes[1])
    top = max(buckets, key=lambda k: (len(buckets[k]), -k))   # most common; ties -> lower score
    dropped = set()
    if len(buckets[top]) > cap:
        keep = set(random.Random(seed).sample(buckets[top], cap))
        dropped = set(buckets[top]) - keep
    return [ex for i, ex in enumerate(examples) if i not in dropped]


def build_eft(groups: Sequence[dict], judge_fn: Callable[[list[str]], list[str]], *,
              template: str | None = None, pattern: str | None = None, strict: bool = False,
              max_ratio: float = 1.0, seed: int = 0, batch_size: int = 64,
              log_path: str | Path | None = None, context: dict | None = None,
              progress: bool = False) -> tuple[list[dict], dict]:
    """The paper's EFT recipe -> (rows, stats).

    1. every reply of every ranked group is put in the judge prompt; `judge_fn(list of judge
       prompts) -> list of judgement texts` (the SFT baseline) writes one judgement each;
    2. a group's judgements are kept only when all parse and `scores_agree` with the ranking;
    3. each kept judgement becomes {"id", "prompt": judge prompt, "response": judgement cut after
       its last score line, "score"}; then `rebalance_by_score`.
    With `log_path`, judgements are appended there as {"reply_id", "judgement", "input_hash"}
    after each batch and reused on the next run (resume; also lets you inspect every raw
    judgement). A logged judgement is reused only when its input_hash (the judge prompt and
    `context`: the judge model and its sampling settings) is the one it would get now. Unlike
    the loop's `<output>.partial` logs (srlm.io.partial_log), removed once their output is
    written, this log is kept: it is the one record of the judgements EFT did not keep.
    """
    ranked = [g for g in groups if len(set(g["ranks"])) >= 2]
    items = [(rid, judge_prompt(g["prompt"], reply, template))
             for g in ranked for rid, reply in zip(g["reply_ids"], g["replies"])]
    want = {rid: input_hash({"judge_prompt": text, **(context or {})}) for rid, text in items}
    done = {}
    for r in read_jsonl_partial(log_path) if log_path else []:
        if isinstance(r, dict) and r.get("input_hash") is not None and want.get(r.get("reply_id")) == r["input_hash"]:
            done[r["reply_id"]] = r["judgement"]
    todo = [(rid, text) for rid, text in items if rid not in done]
    batches = range(0, len(todo), batch_size)
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="EFT judging", unit="batch")
    for start in batches:
        chunk = todo[start:start + batch_size]
        outs = judge_fn([text for _, text in chunk])
        if len(outs) != len(chunk):
            raise RuntimeError(f"judge_fn returned {len(outs)} texts for {len(chunk)} prompts")
        new = [{"reply_id": rid, "judgement": out, "input_hash": want[rid]} for (rid, _), out in zip(chunk, outs)]
        done.update((r["reply_id"], r["judgement"]) for r in new)
        if log_path:
            append_jsonl(log_path, new)

    prompt_of = dict(items)
    examples, kept_groups, unparsed_groups = [], 0, 0
    for g in ranked:
        texts = [done[rid] for rid in g["reply_ids"]]
        scores = [parse_score(t, pattern) for t in texts]
        if any(s is None for s in scores):
            unparsed_groups += 1
            continue
        if not scores_agree(scores, g["ranks"], strict=strict):
            continue
        kept_groups += 1
        for rid, text, score in zip(g["reply_ids"], texts, scores):
            examples.append({"id": rid, "prompt": prompt_of[rid],
                             "response": truncate_after_score(text, score, pattern), "score": score})
    rows = rebalance_by_score(examples, max_ratio=max_ratio, seed=seed)
    stats = {"eft_groups": len(ranked), "eft_groups_unparsed": unparsed_groups,
             "eft_groups_agreeing": kept_groups, "eft_examples_before_rebalance": len(examples),
             "eft_examples": len(rows),
             "eft_score_counts": dict(sorted(Counter(int(math.floor(r["score"] + 0.5))
                                                     for r in rows).items()))}
    return rows, stats


# ----------------------------------------------------------------------------- CLI

def split(trees: str | Path, *, eval_fraction: float = 0.25, include_synthetic: bool = False) -> dict:
    """Read and check the trees, then split them -> {file name: rows} for ift.jsonl,
    train_groups.jsonl and eval_groups.jsonl, plus "train" (the training groups, EFT's input)
    and "stats". Nothing is written: a bad tree fails here, before any output exists."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"--eval-fraction must be in [0, 1], got {eval_fraction}")
    groups, stats = first_turn_groups(trees, include_synthetic=include_synthetic)
    train = [g for g in groups if not is_eval_tree(g["tree_id"], eval_fraction)]
    held_out = [g for g in groups if is_eval_tree(g["tree_id"], eval_fraction)]
    files = {"ift.jsonl": ift_rows(train), "train_groups.jsonl": ranked_group_rows(train),
             "eval_groups.jsonl": ranked_group_rows(held_out)}
    stats.update(eval_fraction=eval_fraction, include_synthetic=include_synthetic, ift=len(files["ift.jsonl"]),
                 train_groups=len(files["train_groups.jsonl"]), eval_groups=len(files["eval_groups.jsonl"]))
    return {"files": files, "train": train, "stats": stats}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", required=True, help="OASST tree export (.jsonl)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--eval-fraction", type=float, default=0.25,
                    help="share of trees held out for eval_groups.jsonl (by tree id hash)")
    ap.add_argument("--include-synthetic", action="store_true",
                    help="keep model-written (synthetic) messages; skipped by default")
    ap.add_argument("--judge-model", help="HF-format checkpoint dir (the SFT baseline): build eft.jsonl")
    ap.add_argument("--chat", choices=sorted(FORMATS),
                    help="the judge's chat format (default: the checkpoint's chat template, else llama2)")
    ap.add_argument("--template", default="default", help="'default', 'compact' or a template file")
    ap.add_argument("--score-pattern", default=None, help="regex with a (?P<score>...) group")
    ap.add_argument("--strict", action="store_true",
                    help="EFT: humans' different ranks need different scores (default: ties allowed)")
    ap.add_argument("--max-ratio", type=float, default=1.0,
                    help="EFT rebalance: most common score <= ratio x the second most common")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on GPU, float32 on CPU (as generate.py and judge.py)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace outputs even with fewer rows than they hold (other trees, a lower --eval-fraction)")
    args = ap.parse_args(argv)

    # Everything is read and checked (trees, template, pattern, the judge model) before a file is written.
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: --out-dir must be a folder (or not exist yet); this is a file")
    parts = split(args.trees, eval_fraction=args.eval_fraction, include_synthetic=args.include_synthetic)
    stats = parts["stats"]
    judge_fn = None
    if args.judge_model:
        from srlm.dist import init_distributed
        from srlm.judge import make_model_judge
        from srlm.loading import load_for_inference, model_id, parse_dtype

        template = load_template(args.template)
        if args.score_pattern:
            parse_score("", args.score_pattern)          # fail early on a bad pattern
        _, _, device = init_distributed(args.device)
        model, tok = load_for_inference(args.judge_model, device=device, dtype=parse_dtype(args.dtype, device),
                                        chat=args.chat)
        judge_fn = make_model_judge(model, tok, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed, batch_size=args.batch_size)
        # what a logged judgement depends on besides its judge prompt (resume key, srlm.io.input_hash)
        context = {"model": model_id(model, tok), "temperature": args.temperature, "top_p": args.top_p,
                   "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    files = dict(parts["files"])
    for name, rows in files.items():  # fewer rows than an earlier output (other trees?): refuse before any work
        check_replace(out_dir / name, len(rows), args.overwrite)
    if judge_fn is not None:
        eft, eft_stats = build_eft(parts["train"], judge_fn, template=template, pattern=args.score_pattern,
                                   strict=args.strict, max_ratio=args.max_ratio, seed=args.seed,
                                   batch_size=args.batch_size, log_path=out_dir / "eft_judgements.jsonl",
                                   context=context, progress=True)
        check_replace(out_dir / "eft.jsonl", len(eft), args.overwrite)
        files["eft.jsonl"] = eft
        stats.update(eft_stats)
    for name, rows in files.items():
        write_jsonl(out_dir / name, rows)
    write_json(out_dir / "stats.json", stats)
    print(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.oasst")
