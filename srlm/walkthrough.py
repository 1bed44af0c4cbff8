"""One self-rewarding iteration on any checkpoint, reported: what a real model does at each step.

The loop's steps, as generate.py, judge.py and train.py run them (the same library calls), on a
handful of prompts, followed by a plain report:

  1. prompts      N first-turn prompts: held-out OASST prompts from ../shared/data when present,
                  else the built-in seed prompts (data/seed_prompts.jsonl), or --prompts FILE
  2. candidates   --n sampled answers per prompt (srlm.candidates.write_candidates)
  3. judging      the paper's LLM-as-a-Judge template, --k judgements per answer, then best vs
                  worst pairs (srlm.pairs.write_pairs): parse rate, score histogram, pairs made
  4. DPO          one optimizer step on those pairs (srlm.trainer.train, --stage dpo), when any
  5. speed        greedy decoding tokens/s of srlm's sampler against transformers' generate on
                  the same weights, prompt and batch (when transformers is installed)

A model that cannot judge yet (parse rate near 0: no "Score: N" line) makes no pairs; the report
says so. That is why the paper fine-tunes the judge on EFT data first (`python -m srlm.oasst
--judge-model DIR` builds it from OASST rankings, then `train.py --stage sft` on IFT + EFT).

    python -m srlm.smollm2 --out runs/smollm2                        # the real model, once
    python -m srlm.walkthrough --model runs/smollm2 --out runs/walk  # about 5 minutes on 2 cores

Every file lands in --out (prompts.jsonl, candidates.jsonl, judgements.jsonl, pairs.jsonl,
dpo/ and report.json); a rerun resumes what is already there.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch

from srlm.candidates import CandidateSettings, write_candidates
from srlm.chat import FORMATS
from srlm.io import DataError, read_jsonl, write_json, write_jsonl
from srlm.loading import load_for_inference
from srlm.pairs import JudgeSettings, write_pairs

REPO = Path(__file__).resolve().parent.parent
OASST = REPO.parent / "shared" / "data" / "oasst1_en_100_trees.jsonl"
SEED_PROMPTS = REPO / "data" / "seed_prompts.jsonl"


def pick_prompts(n: int, prompts: Optional[str] = None, max_chars: int = 300) -> tuple[list[dict], str]:
    """(rows {"id", "prompt"}, where they came from): the first n prompts of --prompts, else n short
    held-out OASST prompts (the same eval split as srlm.oasst), else the built-in seed prompts."""
    if prompts:
        rows, source = read_jsonl(prompts, required=("prompt",)), str(prompts)
    elif OASST.is_file():
        from srlm.oasst import first_turn_groups, is_eval_tree

        groups, _ = first_turn_groups(OASST)
        rows = [g for g in groups if is_eval_tree(g["id"], 0.25) and len(g["prompt"]) <= max_chars]
        source = f"{OASST} (held-out first-turn prompts of at most {max_chars} characters)"
    else:
        rows, source = read_jsonl(SEED_PROMPTS, required=("prompt",)), str(SEED_PROMPTS)
    if not rows:
        raise DataError(f"{source}: no prompts")
    return [{"id": str(r.get("id", i)), "prompt": r["prompt"]} for i, r in enumerate(rows[:n])], source


def unparsed(judgements: list[dict]) -> dict:
    """What the judge wrote where no score could be parsed (judgements.jsonl rows: "judgements",
    and "scores" with None for those): how many were empty because the judge prompt filled the
    model's whole context (make_model_judge), and a few of the others to look at."""
    texts = [t for r in judgements for t, s in zip(r["judgements"], r["scores"]) if s is None]
    return {"no_room": sum(t == "" for t in texts), "unparsed_examples": [t[:200] for t in texts if t][:3]}


def speed_vs_transformers(model_dir, model, tok, prompt: str, batch_sizes=(1, 16), new_tokens: int = 32,
                          repeats: int = 3) -> dict:
    """Greedy decode tokens/s, srlm against transformers, same weights, prompt and batch (the prompt
    repeated, so no padding): srlm.bench.sampling's measurement on a real prompt."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return {"skipped": "transformers is not installed"}
    from srlm.bench.sampling import decode_tokens_per_s, hf_runner, load_hf, ours_runner

    hf = load_hf(model, torch.float32, torch.device("cpu"), folder=model_dir)
    ids = tok.encode_prompt(prompt)
    out = {}
    for b in batch_sizes:
        prompts = torch.tensor([ids] * b)
        tps = decode_tokens_per_s({"srlm": ours_runner(model, prompts), "transformers": hf_runner(hf, prompts)},
                                  b, new_tokens, torch.device("cpu"), repeats)
        out[f"batch {b}"] = {**{k: round(v, 1) for k, v in tps.items()},
                             "ratio": round(tps["srlm"] / tps["transformers"], 2)}
    return out


def run(a: argparse.Namespace) -> dict:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, source = pick_prompts(a.num_prompts, a.prompts)
    model, tok = load_for_inference(a.model, chat=a.chat)
    report: dict = {"model": str(a.model), "chat_format": tok.chat.name, "prompts_from": source,
                    "judge_template": a.template,
                    "threads": torch.get_num_threads()}
    prompts = out / "prompts.jsonl"
    if not prompts.is_file() or read_jsonl(prompts) != rows:
        write_jsonl(prompts, rows)

    # 2. candidates
    t0 = time.perf_counter()
    cs = CandidateSettings(n=a.n, temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                           seed=a.seed, batch_size=a.batch_size)
    write_candidates(model, tok, prompts, out / "candidates.jsonl", cs)
    cands = read_jsonl(out / "candidates.jsonl")
    answer_tokens = sum(len(tok.encode(c)) for r in cands for c in r["candidates"])
    report["candidates"] = {"prompts": len(cands), "answers": sum(len(r["candidates"]) for r in cands),
                            "answer_tokens": answer_tokens, "seconds": round(time.perf_counter() - t0, 1)}

    # 3. judging and pairs
    t0 = time.perf_counter()
    js = JudgeSettings(k=a.k, template=a.template, score_pattern=a.score_pattern,
                       max_new_tokens=a.judge_max_new_tokens, seed=a.seed, batch_size=a.batch_size)
    stats = write_pairs(model, tok, out / "candidates.jsonl", out / "judgements.jsonl", out / "pairs.jsonl", js)
    n = stats["judgements"]  # the same summary judge.py writes to judge_summary.json
    report["judging"] = {"judgements": n, "parsed": n - stats["parse_failures"],
                         "parse_rate": 1 - stats["parse_failure_rate"],
                         "score_histogram": {k: v for k, v in stats["score_histogram"].items() if v},
                         **unparsed(read_jsonl(out / "judgements.jsonl")), "pairs": stats["pairs"],
                         "seconds": round(time.perf_counter() - t0, 1)}

    # 4. one DPO step on whatever pairs there are
    pairs = read_jsonl(out / "pairs.jsonl")
    if pairs:
        from srlm.trainer import TrainConfig, train

        t0 = time.perf_counter()
        metrics = train(TrainConfig(stage="dpo", init=str(a.model), chat=a.chat, data=[str(out / "pairs.jsonl")],
                                    out=str(out / "dpo"), max_steps=1, batch_size=len(pairs), micro_batch_size=1,
                                    seed=a.seed, progress=False))
        report["dpo"] = {"pairs": len(pairs), "steps": 1, "seconds": round(time.perf_counter() - t0, 1),
                         **{k: metrics[k] for k in ("loss", "rewards/accuracies", "rewards/margins")}}
    else:
        report["dpo"] = {"skipped": "no pairs: the judge gave no two answers of one prompt different parsed "
                                    "scores. Fine-tune the judge on EFT data first: python -m srlm.oasst "
                                    "--judge-model DIR builds eft.jsonl, then train.py --stage sft on it."}

    # 5. speed
    if a.speed:
        report["greedy_decode_tokens_per_s"] = speed_vs_transformers(a.model, model, tok, rows[0]["prompt"])
    report["answers"] = [{"prompt": r["prompt"][:120], "answer": r["candidates"][0][:300]} for r in cands[:3]]
    write_json(out / "report.json", report)
    return report


def print_report(r: dict) -> None:
    c, j, d = r["candidates"], r["judging"], r["dpo"]
    print(f"\n{r['model']} ({r['chat_format']} chat), prompts from {r['prompts_from']}")
    print(f"candidates: {c['answers']} answers to {c['prompts']} prompts, {c['answer_tokens']} tokens "
          f"in {c['seconds']} s")
    print(f"judging: {j['parsed']} of {j['judgements']} judgements parsed ({100 * j['parse_rate']:.0f}%), "
          f"scores {j['score_histogram']}, {j['pairs']} pairs, {j['seconds']} s")
    if j["no_room"]:
        print(f"  {j['no_room']} judge prompts filled the model's whole context: no judgement, no score")
    for t in j["unparsed_examples"]:
        print(f"  unparsed: {t[:160]!r}")
    print("dpo: " + ("; ".join(f"{k} {v}" for k, v in d.items())))
    for b, v in r.get("greedy_decode_tokens_per_s", {}).items():
        print(f"greedy decode {b}: {v}")
    for x in r["answers"]:
        print(f"\n> {x['prompt']}\n{x['answer']}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face checkpoint folder")
    p.add_argument("--out", required=True, help="folder for every file of the iteration")
    p.add_argument("--chat", choices=sorted(FORMATS), help="default: the checkpoint's chat template")
    p.add_argument("--prompts", help="JSONL with a 'prompt' per row (default: OASST, else data/seed_prompts.jsonl)")
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=4, help="answers per prompt")
    p.add_argument("--k", type=int, default=1, help="judgements per answer (paper: 3)")
    p.add_argument("--template", default="default", help="judge template: 'default' (the paper's), 'compact' or a file")
    p.add_argument("--score-pattern", help="regex with a (?P<score>...) group (default: 'Score: N' lines)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="per answer")
    p.add_argument("--judge-max-new-tokens", type=int, default=192, help="per judgement")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                   help="time greedy decoding against transformers (batch 1 and 16)")
    a = p.parse_args(argv)
    r = run(a)
    print_report(r)
    print(json.dumps({k: v for k, v in r.items() if k != "answers"}))
    return r


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.walkthrough")
