"""Evaluation after every model of the loop: both of the paper's claims, measured on the built-in world.

1. Instruction following: the model answers held-out prompts (greedy); the world's reference grader
   (srlm/world.py) scores each answer -> answer-correct accuracy (the right option, any style),
   exact accuracy (exactly the bare answer) and the mean 0-5 grade; the same on a second prompt set
   where given (the loop's default: data/eval_prompts_more.jsonl). Head-to-head win/tie/loss
   between two models compares their graded answers prompt by prompt. Open-ended prompts (the
   real-data path, e.g. OASST) have no grader: their answers are saved ungraded, for an outside
   judge (the paper used GPT-4 and AlpacaEval), and the grader metrics read None.
2. Reward modelling, two ways:
   - held-out groups (greedy judge, one judgement per reply) compared with their reference ranking
     by the paper's metrics (srlm/metrics.py). The built-in groups are tell-free: the right and a
     wrong pick, each bare, in a sentence and hedged, so no wording predicts the grade; where the
     groups carry "correct" flags, the judge's right-over-wrong accuracy is reported too.
   - the judge on the model's own samples: `own_samples` answers per held-out prompt, sampled as
     the loop samples candidates, judged greedily; the within-prompt AUC of the judge's scores
     for right against wrong answers (0.5 = blind to correctness), and the sampled answers'
     answer-correct accuracy.

The grader only scores what the model wrote, after the fact: nothing here feeds training.
Greedy decoding and fixed seeds keep the evaluation deterministic, so two runs with the same
checkpoints agree. Results go to `<out_dir>/<name>.json` (+ the raw answers and judgements as
JSONL, to inspect); an existing result is reused only when the input_hash it records (the model's
weights and chat format, both evaluation files, the settings) is unchanged, so a resumed loop never
re-evaluates a model, and a changed model or file is never read from a stale result.

    python -m srlm.evaluate --model runs/default/m1 --name m1 --out-dir runs/default/eval
    # M3's judge on M1's own samples (prints the AUC; compare with m1.json's own_samples):
    python -m srlm.evaluate --model runs/default/iter2/model --judge-max-new-tokens 224 \
        --judge-samples runs/default/eval/m1_own_samples.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from srlm import world
from srlm.chat import FORMATS
from srlm.io import DataError, file_hash, input_hash, read_jsonl, write_json, write_jsonl
from srlm.judge import judge_prompt, load_template, make_model_judge, parse_score
from srlm.metrics import correctness_metrics, reward_model_metrics


def _greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers to chat prompts; a prompt that does not fit the context gets ""."""
    from srlm.sampling import generate

    encoded = [tokenizer.encode_prompt(p) for p in prompts]
    fits = [len(ids) + max_new_tokens <= model.args.max_seq_len for ids in encoded]
    outs = iter(generate(model, [ids for ids, ok in zip(encoded, fits) if ok], max_new_tokens,
                         temperature=0.0, eos_id=tokenizer.eos_id, batch_size=batch_size)
                if any(fits) else [])
    return [tokenizer.decode(next(outs)) if ok else "" for ok in fits]


def _grade_row(prompt: str, answer: str) -> dict:
    task = world.parse_task(prompt)  # None: an open-ended prompt (real data) has no grader
    return {"grade": None if task is None else world.grade(task, answer),
            "correct": None if task is None else world.answer_correct(task, answer),
            "exact": None if task is None else world.is_exact(task, answer)}


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else None


def instruction_following(model, tokenizer, eval_prompts: list[dict], max_new_tokens: int,
                          batch_size: int) -> tuple[dict, list[dict]]:
    answers = _greedy(model, tokenizer, [r["prompt"] for r in eval_prompts], max_new_tokens, batch_size)
    rows = [{"id": r.get("id"), "prompt": r["prompt"], "response": answer, **_grade_row(r["prompt"], answer)}
            for r, answer in zip(eval_prompts, answers)]
    graded = sum(r["grade"] is not None for r in rows)
    metrics = {"answer_correct": _mean(rows, "correct"), "exact_accuracy": _mean(rows, "exact"),
               "mean_grade": _mean(rows, "grade"), "graded": graded, "ungraded": len(rows) - graded,
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
        groups.append({"ranks": g["ranks"], "scores": scores[k : k + n], "correct": g.get("correct", [None] * n)})
        rows.append({"prompt": g["prompt"], "ranks": g["ranks"], "scores": scores[k : k + n],
                     "judgements": texts[k : k + n]})
        k += n
    metrics = reward_model_metrics(groups)
    metrics["parse_failure_rate"] = sum(s is None for s in scores) / max(len(scores), 1)
    right = correctness_metrics(groups)
    metrics["right_over_wrong"], metrics["correctness_pairs"] = right["right_over_wrong"], right["pairs"]
    return metrics, rows


def own_samples(model, tokenizer, eval_prompts: list[dict], template: str, n: int, temperature: float,
                top_p: float, max_new_tokens: int, judge_max_new_tokens: int, batch_size: int,
                score_pattern: str | None = None, seed: int = 0, reply_after: str = "") -> tuple[dict, list[dict]]:
    """The judge on the model's own answers: n sampled answers per prompt, each judged greedily."""
    from srlm.sampling import generate

    prompts = [r["prompt"] for r in eval_prompts]
    encoded = [tokenizer.encode_prompt(p) for p in prompts for _ in range(n)]   # prompt-major
    outs = generate(model, encoded, max_new_tokens, temperature=temperature, top_p=top_p,
                    eos_id=tokenizer.eos_id, seed=seed, batch_size=batch_size)
    answers = [tokenizer.decode(o) for o in outs]
    return judge_samples(model, tokenizer, [{"prompt": p, "answers": answers[i * n:(i + 1) * n]}
                                            for i, p in enumerate(prompts)],
                         template, judge_max_new_tokens, batch_size, score_pattern, reply_after)


def judge_samples(model, tokenizer, samples: list[dict], template: str, judge_max_new_tokens: int, batch_size: int,
                  score_pattern: str | None = None, reply_after: str = "") -> tuple[dict, list[dict]]:
    """Judge given answers greedily: samples are {"prompt", "answers": [str]} rows, as in an
    `<name>_own_samples.jsonl`. Judging one model's samples with another model's judge separates
    a better judge from answers that are easier to judge."""
    flat = [(r["prompt"], a) for r in samples for a in r["answers"]]
    judge_fn = make_model_judge(model, tokenizer, max_new_tokens=judge_max_new_tokens, temperature=0.0,
                                batch_size=batch_size)
    texts = iter(judge_fn([judge_prompt(p, a, template, reply_after) for p, a in flat]))
    rows, groups = [], []
    for r in samples:
        judgements = [next(texts) for _ in r["answers"]]
        graded = [_grade_row(r["prompt"], a) for a in r["answers"]]
        scores = [parse_score(t, score_pattern) for t in judgements]
        groups.append({"correct": [g["correct"] for g in graded], "scores": scores})
        rows.append({"prompt": r["prompt"], "answers": list(r["answers"]), "correct": groups[-1]["correct"],
                     "scores": scores, "judgements": judgements})
    right = correctness_metrics(groups)
    flags = [c for g in groups for c in g["correct"] if c is not None]
    metrics = {"auc": right["auc"], "right_over_wrong": right["right_over_wrong"], "prompts_with_both": right["groups"],
               "sampled_answer_correct": sum(flags) / len(flags) if flags else None, "samples": len(flat)}
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


def eval_key(model, tokenizer, eval_prompts_file, eval_groups_file, settings: dict) -> str:
    """The input_hash of an evaluation: the model (weights and chat format, srlm.loading.model_id),
    the contents of both evaluation files and every setting that shapes the answers and judgements."""
    from srlm.loading import model_id

    return input_hash({"model": model_id(model, tokenizer), "eval_prompts": file_hash(eval_prompts_file),
                       "eval_groups": file_hash(eval_groups_file), **settings})


def read_eval_prompts(path) -> list[dict]:
    """Held-out prompts {"prompt", ...}, checked (file:line: key); an empty file fails too."""
    rows = read_jsonl(path, required=("prompt",), types={"prompt": "str"})
    if not rows:
        raise DataError(f"{path}: no prompts in this file")
    return rows


def read_eval_inputs(eval_prompts_file, eval_groups_file) -> tuple[list[dict], list[dict]]:
    """The held-out prompts and ranked groups, checked (file:line: key); a bad file fails here."""
    from srlm.pairs import load_groups

    eval_prompts = read_eval_prompts(eval_prompts_file)
    load_groups(eval_groups_file)  # the checks judge.py --eval makes (types, ranks per reply)
    eval_groups = read_jsonl(eval_groups_file, required=("prompt", "replies", "ranks"))
    return eval_prompts, eval_groups


def evaluate_model(model, tokenizer, name: str, out_dir, eval_prompts_file, eval_groups_file, *, template="compact",
                   max_new_tokens: int = 48, judge_max_new_tokens: int = 48, batch_size: int = 64,
                   score_pattern: str | None = None, own_samples_n: int = 0, temperature: float = 0.7,
                   top_p: float = 0.9, seed: int = 0, more_prompts_file=None, reply_after: str = "") -> dict:
    """Evaluate one model (srlm.loading.load_for_inference), results in <out_dir>/<name>.json.

    The result file records the input_hash of what produced it (`eval_key`: the model, the
    evaluation files, the settings); it is reused only when that hash is unchanged, else the
    evaluation runs again and replaces it. own_samples_n = 0 skips the judge-on-own-samples
    measurement (it costs n answers and n judgements per prompt). more_prompts_file: a second set
    of held-out prompts, answered and graded like the first (result "instruction_following_more";
    the built-in world's data/eval_prompts_more.jsonl: 100 prompts per family instead of 20).
    reply_after: the judge of own samples sees only their final answers (srlm.judge.reply_view)."""
    eval_prompts, eval_groups = read_eval_inputs(eval_prompts_file, eval_groups_file)
    more_prompts = read_eval_prompts(more_prompts_file) if more_prompts_file else None
    template = load_template(template)
    settings = {"template": template, "max_new_tokens": max_new_tokens, "judge_max_new_tokens": judge_max_new_tokens,
                "batch_size": batch_size, "score_pattern": score_pattern, "own_samples": own_samples_n,
                "temperature": temperature, "top_p": top_p, "seed": seed}
    if more_prompts_file:  # only then, so that results without it keep their hash
        settings["more_prompts"] = file_hash(more_prompts_file)
    if reply_after:  # likewise
        settings["reply_after"] = reply_after
    key = eval_key(model, tokenizer, eval_prompts_file, eval_groups_file, settings)
    out_dir = Path(out_dir)
    result_file = out_dir / f"{name}.json"
    if result_file.is_file():
        try:
            cached = json.loads(result_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            cached = None  # a damaged result is computed again
        if isinstance(cached, dict) and cached.get("input_hash") == key:
            return {k: v for k, v in cached.items() if k != "input_hash"}
    with torch.no_grad():
        ift, answers = instruction_following(model, tokenizer, eval_prompts, max_new_tokens, batch_size)
        rm, judgements = reward_modelling(model, tokenizer, eval_groups, template, judge_max_new_tokens,
                                          batch_size, score_pattern)
        more = None
        if more_prompts is not None:
            more, more_answers = instruction_following(model, tokenizer, more_prompts, max_new_tokens, batch_size)
        own = None
        if own_samples_n > 0:
            own, own_rows = own_samples(model, tokenizer, eval_prompts, template, own_samples_n, temperature,
                                        top_p, max_new_tokens, judge_max_new_tokens, batch_size, score_pattern, seed,
                                        reply_after)
    write_jsonl(out_dir / f"{name}_answers.jsonl", answers)
    write_jsonl(out_dir / f"{name}_judgements.jsonl", judgements)
    result = {"model": name, "instruction_following": ift, "reward_modelling": rm}
    if more is not None:
        write_jsonl(out_dir / f"{name}_answers_more.jsonl", more_answers)
        result["instruction_following_more"] = more
    if own is not None:
        write_jsonl(out_dir / f"{name}_own_samples.jsonl", own_rows)
        result["own_samples"] = own
    write_json(result_file, {**result, "input_hash": key})  # last: its matching hash marks the evaluation done
    return result


def load_answers(out_dir, name: str) -> list[dict]:
    return read_jsonl(Path(out_dir) / f"{name}_answers.jsonl")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF-format checkpoint directory (with tokenizer.model or tokenizer.json)")
    p.add_argument("--chat", choices=sorted(FORMATS),
                   help="chat format (default: the checkpoint's chat template, else llama2)")
    p.add_argument("--name", help="name of the result files, e.g. m1")
    p.add_argument("--out-dir")
    p.add_argument("--judge-samples", help="instead: judge the answers of a <name>_own_samples.jsonl with this "
                                           "model and print the metrics (writes nothing)")
    p.add_argument("--eval-prompts", default="data/eval_prompts.jsonl")
    p.add_argument("--eval-groups", default="data/eval_groups.jsonl")
    p.add_argument("--eval-prompts-more", help="a second held-out prompt file, graded on its own "
                                                "(e.g. data/eval_prompts_more.jsonl)")
    p.add_argument("--judge-template", default="compact", help="'default', 'compact' or a template file")
    p.add_argument("--score-pattern", default=None, help="regex with a (?P<score>...) group")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--judge-max-new-tokens", type=int, help="longest judgement (default: --max-new-tokens)")
    p.add_argument("--judge-reply-after", default="", help="the judge sees only the text after the last "
                                                           "such marker of a reply, e.g. 'That gives '")
    p.add_argument("--own-samples", type=int, default=4, help="answers per prompt for the judge's AUC (0: skip)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from srlm.loading import load_for_inference

    judge_tokens = a.judge_max_new_tokens or a.max_new_tokens
    if a.judge_samples:
        samples = read_jsonl(a.judge_samples, required=("prompt", "answers"),
                             types={"prompt": "str", "answers": "list[str]"})  # bad input fails before the model loads
        template = load_template(a.judge_template)
        model, tokenizer = load_for_inference(a.model, device=a.device, chat=a.chat)
        with torch.no_grad():
            metrics, _ = judge_samples(model, tokenizer, samples, template, judge_tokens, 64, a.score_pattern,
                                       a.judge_reply_after)
        print(json.dumps(metrics, indent=2))
        return metrics
    if not (a.name and a.out_dir):
        raise DataError("give --name and --out-dir (a full evaluation), or --judge-samples FILE")
    if Path(a.out_dir).exists() and not Path(a.out_dir).is_dir():
        raise DataError(f"{a.out_dir}: --out-dir must be a folder (or not exist yet); this is a file")
    read_eval_inputs(a.eval_prompts, a.eval_groups)  # bad input fails before the model loads
    if a.eval_prompts_more:
        read_eval_prompts(a.eval_prompts_more)
    load_template(a.judge_template)
    if a.score_pattern:
        parse_score("", a.score_pattern)
    model, tokenizer = load_for_inference(a.model, device=a.device, chat=a.chat)  # the dtype generation samples in
    result = evaluate_model(model, tokenizer, a.name, a.out_dir, a.eval_prompts, a.eval_groups,
                            template=a.judge_template, max_new_tokens=a.max_new_tokens,
                            judge_max_new_tokens=judge_tokens, score_pattern=a.score_pattern,
                            own_samples_n=a.own_samples, more_prompts_file=a.eval_prompts_more,
                            reply_after=a.judge_reply_after)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from srlm.cli import run_cli

    run_cli(main, "python -m srlm.evaluate")  # bad input: one line naming file, line and key; exit 2
