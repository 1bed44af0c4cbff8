"""Evaluation after every model of the loop: both of the paper's claims, measured on the built-in world.

1. Instruction following: the model answers held-out prompts (greedy); the world's reference grader
   (srlm/world.py) scores each answer 0-5 -> mean score and exact-answer accuracy. Head-to-head
   win/tie/loss between two models compares their graded answers prompt by prompt. Open-ended
   prompts (the real-data path, e.g. OASST) have no grader: their answers are saved ungraded, for
   an outside judge (the paper used GPT-4 and AlpacaEval), and the grader metrics read None.
2. Reward modelling: the model judges every reply of held-out ranked groups with the judge prompt
   (greedy, one judgement each); its parsed scores are compared with the reference ranking using
   the paper's metrics (srlm/metrics.py), and the judge parse-failure rate is reported.

Greedy decoding keeps the evaluation deterministic, so two runs with the same checkpoints agree.
Results go to `<out_dir>/<name>.json` (+ the raw answers and judgements as JSONL, to inspect);
an existing result is reused, so a resumed loop never re-evaluates a finished model.

    python -m srlm.evaluate --model runs/default/m1/model --name m1 --out-dir runs/default/eval
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from srlm import world
from srlm.io import read_jsonl, write_json, write_jsonl
from srlm.judge import judge_prompt, load_template, make_model_judge, parse_score
from srlm.metrics import reward_model_metrics


def _greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers to chat prompts; a prompt that does not fit the context gets ""."""
    from srlm.sampling import generate

    encoded = [tokenizer.encode_prompt(p) for p in prompts]
    fits = [len(ids) + max_new_tokens <= model.args.max_seq_len for ids in encoded]
    outs = iter(generate(model, [ids for ids, ok in zip(encoded, fits) if ok], max_new_tokens,
                         temperature=0.0, eos_id=tokenizer.eos_id, batch_size=batch_size)
                if any(fits) else [])
    return [tokenizer.decode(next(outs)) if ok else "" for ok in fits]


def instruction_following(model, tokenizer, eval_prompts: list[dict], max_new_tokens: int,
                          batch_size: int) -> tuple[dict, list[dict]]:
    answers = _greedy(model, tokenizer, [r["prompt"] for r in eval_prompts], max_new_tokens, batch_size)
    rows = []
    for r, answer in zip(eval_prompts, answers):
        task = world.parse_task(r["prompt"])  # None: an open-ended prompt (real data) has no grader
        rows.append({"id": r.get("id"), "prompt": r["prompt"], "response": answer,
                     "grade": None if task is None else world.grade(task, answer),
                     "exact": None if task is None else world.is_exact(task, answer)})
    graded = [r for r in rows if r["grade"] is not None]
    n = len(graded)
    metrics = {"mean_grade": sum(r["grade"] for r in graded) / n if n else None,
               "exact_accuracy": sum(r["exact"] for r in graded) / n if n else None,
               "graded": n, "ungraded": len(rows) - n,
               "mean_response_chars": sum(len(r["response"]) for r in rows) / max(len(rows), 1)}
    return metrics, rows


def reward_modelling(model, tokenizer, eval_groups: list[dict], template: str, max_new_tokens: int,
                     batch_size: int, score_pattern: str | None = None) -> tuple[dict, list[dict]]:
    flat = [judge_prompt(g["prompt"], reply, template) for g in eval_groups for reply in g["replies"]]
    judge_fn = make_model_judge(model, tokenizer, max_new_tokens=max_new_tokens, temperature=0.0,
                                batch_size=batch_size)  # greedy: the same judge judge.py runs, made deterministic
    texts = judge_fn(flat)  # every reply of every group, in order
    scores = [parse_score(t, score_pattern) for t in texts]
    groups, rows, k = [], [], 0
    for g in eval_groups:
        n = len(g["replies"])
        groups.append({"ranks": g["ranks"], "scores": scores[k : k + n]})
        rows.append({"prompt": g["prompt"], "ranks": g["ranks"], "scores": scores[k : k + n],
                     "judgements": texts[k : k + n]})
        k += n
    metrics = reward_model_metrics(groups)
    metrics["parse_failure_rate"] = sum(s is None for s in scores) / max(len(scores), 1)
    return metrics, rows


def head_to_head(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """Win/tie/loss of model A against model B under the reference grader, prompt by prompt
    (prompts without a grade on either side are left out)."""
    by_prompt = {r["prompt"]: r["grade"] for r in rows_b}
    win = tie = loss = 0
    for r in rows_a:
        b = by_prompt.get(r["prompt"])
        if b is None or r["grade"] is None:
            continue
        win += r["grade"] > b
        tie += r["grade"] == b
        loss += r["grade"] < b
    n = max(win + tie + loss, 1)
    return {"win": win / n, "tie": tie / n, "loss": loss / n, "prompts": win + tie + loss}


def evaluate_model(model_dir, name: str, out_dir, eval_prompts_file, eval_groups_file, *, template="compact",
                   max_new_tokens: int = 48, judge_max_new_tokens: int = 48, batch_size: int = 64,
                   score_pattern: str | None = None, device: str = "cpu") -> dict:
    """Evaluate one checkpoint; cached in <out_dir>/<name>.json."""
    from srlm.checkpoint import load_model
    from srlm.tokenizer import Tokenizer

    out_dir = Path(out_dir)
    result_file = out_dir / f"{name}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32  # as generate.py samples
    model = load_model(model_dir, dtype=dtype, device=device).eval()
    tokenizer = Tokenizer.from_dir(model_dir)
    eval_prompts = read_jsonl(eval_prompts_file, required=("prompt",))
    eval_groups = read_jsonl(eval_groups_file, required=("prompt", "replies", "ranks"))
    with torch.no_grad():
        ift, answers = instruction_following(model, tokenizer, eval_prompts, max_new_tokens, batch_size)
        rm, judgements = reward_modelling(model, tokenizer, eval_groups, load_template(template),
                                          judge_max_new_tokens, batch_size, score_pattern)
    write_jsonl(out_dir / f"{name}_answers.jsonl", answers)
    write_jsonl(out_dir / f"{name}_judgements.jsonl", judgements)
    result = {"model": name, "instruction_following": ift, "reward_modelling": rm}
    write_json(result_file, result)
    return result


def load_answers(out_dir, name: str) -> list[dict]:
    return read_jsonl(Path(out_dir) / f"{name}_answers.jsonl")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF-format checkpoint directory (with tokenizer.model)")
    p.add_argument("--name", required=True, help="name of the result files, e.g. m1")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--eval-prompts", default="data/eval_prompts.jsonl")
    p.add_argument("--eval-groups", default="data/eval_groups.jsonl")
    p.add_argument("--judge-template", default="compact", help="'default', 'compact' or a template file")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    result = evaluate_model(a.model, a.name, a.out_dir, a.eval_prompts, a.eval_groups, template=a.judge_template,
                            max_new_tokens=a.max_new_tokens, judge_max_new_tokens=a.max_new_tokens, device=a.device)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
